//! Starting the role's listeners and waiting on them, and the shutdown signal.

use std::sync::Arc;

use tokio::task::JoinSet;

use crate::bookinfo::details::Details;
use crate::bookinfo::productpage::Productpage;
use crate::bookinfo::ratings::Ratings;
use crate::bookinfo::reviews::Reviews;
use crate::config::{Config, Role};
use crate::helloworld::Helloworld;
use crate::httpbin::Httpbin;
use crate::tcp_echo;
use crate::web::{self, Handler, bind_any};

/// Why the app could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A port could not be bound.
    #[error("{app}: {source}")]
    Listen {
        /// The app label.
        app: String,
        /// The bind failure.
        #[source]
        source: web::Error,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Binds every port of `config`, then serves until the process is stopped.
pub async fn run(config: Config) -> Result<()> {
    match serde_json::to_string(&config) {
        Ok(json) => tracing::info!("config: {json}"),
        Err(e) => tracing::warn!("config could not be logged: {e}"),
    }
    let mut tasks = JoinSet::new();
    let mut listeners = Vec::with_capacity(config.ports.len());
    for port in &config.ports {
        let listener = bind_any(*port).await.map_err(|source| Error::Listen {
            app: config.app.clone(),
            source,
        })?;
        listeners.push((*port, listener));
    }
    for (port, listener) in listeners {
        let what = spawn_role(&mut tasks, &config.role, listener);
        tracing::info!(
            "{} ({}) serving {what} on 0.0.0.0:{port}",
            config.app,
            config.version
        );
    }
    match &config.role {
        Role::Idle => {
            tracing::info!(
                "idle client pod {}/{}: serving nothing",
                config.namespace,
                config.pod
            );
            std::future::pending::<()>().await;
        }
        Role::Httpbin(httpbin) if httpbin.fallback => {
            tracing::info!(
                "app {:?} is not a known sample: fell back to httpbin",
                config.app
            );
        }
        _ => {}
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            tracing::error!("a listener task failed: {e}");
        }
    }
    Ok(())
}

fn spawn_http<H: Handler>(tasks: &mut JoinSet<()>, listener: tokio::net::TcpListener, handler: H) {
    tasks.spawn(web::serve(listener, Arc::new(handler)));
}

/// Spawns the server of `role` on `listener`; returns what it serves, for the startup line.
fn spawn_role(
    tasks: &mut JoinSet<()>,
    role: &Role,
    listener: tokio::net::TcpListener,
) -> &'static str {
    match role {
        Role::Productpage(c) => {
            spawn_http(tasks, listener, Productpage::new(c.clone()));
            "bookinfo productpage over HTTP/1.1 and h2c"
        }
        Role::Details => {
            spawn_http(tasks, listener, Details);
            "bookinfo details over HTTP/1.1 and h2c"
        }
        Role::Reviews(c) => {
            spawn_http(tasks, listener, Reviews::new(c.clone()));
            "bookinfo reviews over HTTP/1.1 and h2c"
        }
        Role::Ratings(c) => {
            spawn_http(tasks, listener, Ratings::new(c.clone()));
            "bookinfo ratings over HTTP/1.1 and h2c"
        }
        Role::Httpbin(c) => {
            spawn_http(tasks, listener, Httpbin::new(c));
            "httpbin over HTTP/1.1 and h2c"
        }
        Role::Helloworld(c) => {
            spawn_http(tasks, listener, Helloworld::new(c));
            "helloworld over HTTP/1.1 and h2c"
        }
        Role::TcpEcho(c) => {
            tasks.spawn(tcp_echo::serve(listener, c.prefix.clone()));
            "tcp-echo"
        }
        Role::Idle => "nothing",
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!("cannot install signal handlers ({e}); falling back to Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: exiting"),
        _ = int.recv() => tracing::info!("SIGINT: exiting"),
    }
}
