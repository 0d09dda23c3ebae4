//! `mesh-waypoint`: the L7 waypoint of the ambient mesh.
//!
//! - [`route`]: the VirtualServices of a host compiled into a table that decides, per request
//!   or connection, where it goes and what happens on the way (pure, no network);
//! - [`upstream`]: what a DestinationRule does once the destination is chosen: endpoint choice
//!   (load balancers, consistent hashing), connection-pool limits (circuit breaking), outlier
//!   detection (pure, no network);
//! - [`cli`]: the command line and environment the process reads;
//! - [`server`]: the process: certificate, config model, HBONE on 15008, admin and metrics;
//! - [`http`] and [`tcp`]: serving one tunnel at L7 or L4; [`authz`]: AuthorizationPolicy on
//!   requests and connections; [`destinations`]: the per-snapshot caches and the connections
//!   to endpoints; [`metrics`]: Istio's request and TCP metrics.

pub mod authn;
pub mod authz;
pub mod cli;
pub mod destinations;
pub mod http;
pub mod metrics;
pub mod route;
pub mod server;
pub mod tcp;
pub mod upstream;
