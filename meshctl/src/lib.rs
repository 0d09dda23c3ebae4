//! `meshctl` as a library: what the command line prints, for tools and tests that want it
//! without running the binary. Today: [`waypoint`], the Gateway that asks for a waypoint.

pub mod waypoint;
