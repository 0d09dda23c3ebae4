//! Istio's `tcp-echo-server`: on every port, each line a client sends comes back as
//! `<prefix> <line>`; the connection stays open until the client closes it.

use std::net::SocketAddr;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Where tcp-echo listens and what it prepends.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct TcpEchoConfig {
    pub(crate) ports: Vec<u16>,
    pub(crate) prefix: String,
}

/// Why the container args could not configure tcp-echo.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error(
        "tcp-echo: container arg {0:?} is not a comma-separated list of ports (like \"9000,9001\")"
    )]
    Ports(String),
    #[error("tcp-echo: no ports; pass them as the first container arg or with --port")]
    NoPorts,
}

impl TcpEchoConfig {
    /// Container args `["9000,9001,9002", "<prefix>"]` win; without args, `--port`s and the
    /// prefix `hello`.
    pub(crate) fn from_args(args: &[String], ports: &[u16]) -> Result<Self, Error> {
        let ports = match args.first() {
            Some(list) => list
                .split(',')
                .map(|p| p.trim().parse::<u16>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| Error::Ports(list.clone()))?,
            None => ports.to_vec(),
        };
        if ports.is_empty() {
            return Err(Error::NoPorts);
        }
        let prefix = args.get(1).cloned().unwrap_or_else(|| "hello".to_owned());
        Ok(Self { ports, prefix })
    }
}

/// Accepts connections forever, echoing each.
pub(crate) async fn serve(listener: TcpListener, prefix: String) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(echo(stream, peer, prefix.clone()));
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn echo(stream: TcpStream, peer: SocketAddr, prefix: String) {
    tracing::info!(target: "access", "{peer} connected");
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    let mut reply = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            // Like the Go server, a final line without a newline is dropped.
            Ok(0) => break,
            Ok(_) if line.last() != Some(&b'\n') => break,
            Ok(_) => {
                reply.clear();
                reply.extend_from_slice(prefix.as_bytes());
                reply.push(b' ');
                reply.extend_from_slice(&line);
                if let Err(e) = write.write_all(&reply).await {
                    tracing::debug!("writing to {peer}: {e}");
                    break;
                }
                tracing::info!(target: "access", "{peer} {}", String::from_utf8_lossy(&line).trim_end());
            }
            Err(e) => {
                tracing::debug!("reading from {peer}: {e}");
                break;
            }
        }
    }
    tracing::info!(target: "access", "{peer} closed");
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn args_port_list_wins_over_flags() {
        let config = TcpEchoConfig::from_args(&args(&["9000,9001,9002", "one"]), &[1234]).unwrap();
        assert_eq!(
            config,
            TcpEchoConfig {
                ports: vec![9000, 9001, 9002],
                prefix: "one".to_owned()
            }
        );
    }

    #[test]
    fn without_args_flags_and_hello_prefix_are_used() {
        let config = TcpEchoConfig::from_args(&[], &[9000]).unwrap();
        assert_eq!(
            config,
            TcpEchoConfig {
                ports: vec![9000],
                prefix: "hello".to_owned()
            }
        );
    }

    #[test]
    fn bad_port_list_is_an_error() {
        assert_eq!(
            TcpEchoConfig::from_args(&args(&["9000,x"]), &[]),
            Err(Error::Ports("9000,x".to_owned()))
        );
        assert_eq!(TcpEchoConfig::from_args(&[], &[]), Err(Error::NoPorts));
    }

    #[tokio::test]
    async fn each_line_comes_back_with_the_prefix_on_one_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, "two".to_owned()));
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(b"hello world\nsecond\n").await.unwrap();
        let expected = b"two hello world\ntwo second\n";
        let mut got = vec![0; expected.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
        // Still open: a third line is answered too.
        client.write_all(b"third\n").await.unwrap();
        let mut got = vec![0; b"two third\n".len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"two third\n");
    }
}
