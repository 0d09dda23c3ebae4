//! `websocket-client URL COUNT`: the WebSocket client the tests run in a pod (the lab's curl
//! has no WebSocket). Opens URL, sends COUNT messages (text and binary in turn, each
//! different) and checks that each comes back unchanged before the next goes, then closes
//! and waits for the server's close. Prints the handshake's status and response headers and
//! the number of messages echoed as JSON; exits non-zero (with the status and body of a
//! refused handshake) on any failure. Everything within 10 s.

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::{Error, Message};

const DEADLINE: Duration = Duration::from_secs(10);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(count)) = (args.next(), args.next()) else {
        bail!("usage: websocket-client URL COUNT");
    };
    let count: usize = count.parse().context("COUNT is a number of messages")?;
    let report = tokio::time::timeout(DEADLINE, session(&url, count))
        .await
        .with_context(|| format!("{url}: not done within {DEADLINE:?}"))??;
    println!("{report}");
    Ok(())
}

async fn session(url: &str, count: usize) -> Result<Value> {
    let (mut socket, response) = match tokio_tungstenite::connect_async(url).await {
        Ok(connected) => connected,
        Err(Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            bail!(
                "{url}: handshake refused with HTTP {}: {}",
                response.status().as_u16(),
                body.trim()
            );
        }
        Err(e) => bail!("{url}: {e}"),
    };
    let headers: Map<String, Value> = response
        .headers()
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), Value::String(value))
        })
        .collect();
    for n in 0..count {
        let message = if n % 2 == 0 {
            Message::text(format!("message {n} from the client"))
        } else {
            Message::binary(vec![n as u8; n + 1])
        };
        socket.send(message.clone()).await.context("sending")?;
        let echoed = socket
            .next()
            .await
            .with_context(|| format!("the connection ended before echo {n}"))?
            .with_context(|| format!("reading echo {n}"))?;
        ensure!(echoed == message, "sent {message:?}, got back {echoed:?}");
    }
    socket.close(None).await.context("closing")?;
    while let Some(message) = socket.next().await {
        match message {
            Ok(Message::Close(_)) | Err(Error::ConnectionClosed) => {}
            other => bail!("after the close, {other:?}"),
        }
    }
    Ok(json!({
        "status": response.status().as_u16(),
        "headers": headers,
        "echoed": count,
    }))
}
