//! sample-app: the one binary every container of the simulated cluster runs. The pod's `app`
//! label picks the behaviour: Istio's bookinfo services, httpbin, helloworld, tcp-echo, or an
//! idle client.

mod app;
mod bookinfo;
mod config;
mod helloworld;
mod httpbin;
mod tcp_echo;
mod web;

pub use app::{Error, Result, run, shutdown_signal};
pub use config::{Cli, Config, Error as ConfigError};
pub use httpbin::Error as HttpbinError;
pub use tcp_echo::Error as TcpEchoError;
pub use web::Error as ListenError;
