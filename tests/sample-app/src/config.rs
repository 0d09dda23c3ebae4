//! The command line (the simulator's contract) and the typed, `Serialize` config built from it
//! and the environment in one place: which role this container plays and on which ports.

use clap::Parser;
use serde::Serialize;

use crate::bookinfo::Env;
use crate::bookinfo::productpage::ProductpageConfig;
use crate::bookinfo::ratings::RatingsConfig;
use crate::bookinfo::reviews::ReviewsConfig;
use crate::helloworld::HelloworldConfig;
use crate::httpbin::{self, HttpbinConfig};
use crate::tcp_echo::{self, TcpEchoConfig};

/// `sample-app --app <label> [--version v1] --pod <name> --namespace <ns> [--port N]... [-- args...]`
#[derive(Debug, Clone, Parser, PartialEq, Eq)]
#[command(name = "sample-app", disable_version_flag = true)]
#[command(
    about = "The one binary every simulated container runs; its behaviour follows the pod's `app` label."
)]
pub struct Cli {
    /// The pod's `app` label: productpage, details, reviews, ratings, httpbin, helloworld,
    /// tcp-echo, or a client (curl, sleep, fortio, netshoot, client).
    #[arg(long)]
    pub app: String,
    /// The pod's `version` label.
    #[arg(long, default_value = "v1")]
    pub version: String,
    /// The pod's name.
    #[arg(long)]
    pub pod: String,
    /// The pod's namespace.
    #[arg(long)]
    pub namespace: String,
    /// A containerPort (repeatable).
    #[arg(long = "port")]
    pub ports: Vec<u16>,
    /// The container's args.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// What this container does.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub(crate) enum Role {
    Productpage(ProductpageConfig),
    Details,
    Reviews(ReviewsConfig),
    Ratings(RatingsConfig),
    Httpbin(HttpbinConfig),
    Helloworld(HelloworldConfig),
    TcpEcho(TcpEchoConfig),
    Idle,
}

/// Labels that are plain clients: they serve nothing.
const CLIENT_APPS: &[&str] = &["curl", "sleep", "fortio", "netshoot", "client"];

/// Why the command line cannot be turned into a config.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tcp-echo container args are wrong.
    #[error(transparent)]
    TcpEcho(#[from] tcp_echo::Error),
    /// httpbin's environment is wrong.
    #[error(transparent)]
    Httpbin(#[from] httpbin::Error),
}

/// The whole config of one container, logged at start.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub(crate) app: String,
    pub(crate) version: String,
    pub(crate) pod: String,
    pub(crate) namespace: String,
    /// The ports served (for tcp-echo: the args' list).
    pub(crate) ports: Vec<u16>,
    pub(crate) args: Vec<String>,
    pub(crate) role: Role,
}

impl Config {
    /// Builds the config from the command line and the process environment.
    pub fn from_cli(cli: Cli) -> Result<Self, Error> {
        Self::from_cli_env(cli, &|k| std::env::var(k).ok())
    }

    /// Builds the config from the command line and `env`.
    ///
    /// Known servers without a `--port` listen on their image's usual port (bookinfo 9080,
    /// httpbin 8080, helloworld 5000), as the real images do whatever the manifest declares.
    pub(crate) fn from_cli_env(cli: Cli, env: Env<'_>) -> Result<Self, Error> {
        let Cli {
            app,
            version,
            pod,
            namespace,
            ports,
            args,
        } = cli;
        let default_port = |p: u16| {
            if ports.is_empty() {
                vec![p]
            } else {
                ports.clone()
            }
        };
        let (role, ports) = match app.as_str() {
            "productpage" => (
                Role::Productpage(ProductpageConfig::from_env(env)),
                default_port(9080),
            ),
            "details" => (Role::Details, default_port(9080)),
            "reviews" => (
                Role::Reviews(ReviewsConfig::from_env(&version, &pod, env)),
                default_port(9080),
            ),
            "ratings" => (
                Role::Ratings(RatingsConfig::from_env(&version, env)),
                default_port(9080),
            ),
            "httpbin" => (
                Role::Httpbin(HttpbinConfig::from_env(&pod, false, env)?),
                default_port(8080),
            ),
            "helloworld" => {
                let config = HelloworldConfig {
                    version: env("SERVICE_VERSION").unwrap_or_else(|| version.clone()),
                    instance: pod.clone(),
                };
                (Role::Helloworld(config), default_port(5000))
            }
            "tcp-echo" => {
                let config = TcpEchoConfig::from_args(&args, &ports)?;
                let ports = config.ports.clone();
                (Role::TcpEcho(config), ports)
            }
            a if CLIENT_APPS.contains(&a) || ports.is_empty() => (Role::Idle, Vec::new()),
            _ => (
                Role::Httpbin(HttpbinConfig::from_env(&pod, true, env)?),
                ports.clone(),
            ),
        };
        Ok(Self {
            app,
            version,
            pod,
            namespace,
            ports,
            args,
            role,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("sample-app").chain(args.iter().copied())).unwrap()
    }

    fn config(args: &[&str]) -> Config {
        Config::from_cli_env(parse(args), &|_| None).unwrap()
    }

    #[test]
    fn cli_parses_repeated_ports_and_trailing_args() {
        let cli = parse(&[
            "--app",
            "tcp-echo",
            "--pod",
            "tcp-echo-1",
            "--namespace",
            "default",
            "--port",
            "9000",
            "--port",
            "9001",
            "--",
            "9000,9001",
            "one",
        ]);
        assert_eq!(cli.app, "tcp-echo");
        assert_eq!(cli.version, "v1");
        assert_eq!(cli.ports, vec![9000, 9001]);
        assert_eq!(cli.args, vec!["9000,9001", "one"]);
    }

    #[test]
    fn cli_accepts_version_and_requires_pod_and_namespace() {
        let cli = parse(&[
            "--app",
            "reviews",
            "--version",
            "v3",
            "--pod",
            "p",
            "--namespace",
            "n",
        ]);
        assert_eq!(cli.version, "v3");
        assert!(Cli::try_parse_from(["sample-app", "--app", "x", "--pod", "p"]).is_err());
    }

    #[test]
    fn client_labels_and_portless_unknown_apps_are_idle() {
        let c = config(&[
            "--app",
            "curl",
            "--pod",
            "p",
            "--namespace",
            "n",
            "--port",
            "80",
        ]);
        assert!(matches!(c.role, Role::Idle));
        let c = config(&["--app", "mystery", "--pod", "p", "--namespace", "n"]);
        assert!(matches!(c.role, Role::Idle));
    }

    #[test]
    fn unknown_app_with_ports_falls_back_to_httpbin() {
        let c = config(&[
            "--app",
            "mystery",
            "--pod",
            "p",
            "--namespace",
            "n",
            "--port",
            "8000",
        ]);
        assert!(matches!(
            c.role,
            Role::Httpbin(HttpbinConfig { fallback: true, .. })
        ));
        assert_eq!(c.ports, vec![8000]);
    }

    #[test]
    fn bookinfo_defaults_to_9080_and_tcp_echo_takes_ports_from_args() {
        let c = config(&["--app", "details", "--pod", "p", "--namespace", "n"]);
        assert_eq!(c.ports, vec![9080]);
        let c = config(&[
            "--app",
            "tcp-echo",
            "--pod",
            "p",
            "--namespace",
            "n",
            "--",
            "9000,9002",
            "x",
        ]);
        assert_eq!(c.ports, vec![9000, 9002]);
    }

    #[test]
    fn config_serializes_with_role_kind() {
        let c = config(&[
            "--app",
            "reviews",
            "--version",
            "v2",
            "--pod",
            "p",
            "--namespace",
            "n",
        ]);
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["role"]["kind"], "reviews");
        assert_eq!(json["role"]["ratings"]["color"], "black");
        assert_eq!(json["role"]["ratings"]["timeout"], 10.0);
    }
}
