//! Wakes this process's dispatcher when another process's intake commits
//! an event to dispatch. Intake sends `NOTIFY waybill_inbox` in the
//! transaction that stores such events, so the notice goes out with the
//! commit; each process holds one connection of its own that listens.
//! The dispatcher's poll stays as the fallback: a listening connection
//! that drops, or a notice lost with it, costs at most the poll interval,
//! never an event. A process also hears its own notices: one spare wake.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use super::Inner;

/// The channel intake notifies and every dispatcher listens on.
pub(super) const CHANNEL: &str = "waybill_inbox";

/// The least and most time between two attempts to listen again.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MOST: Duration = Duration::from_secs(5);

/// Listens until the process stops, connecting again after a failure.
pub(super) async fn run(inner: Arc<Inner>) {
    let mut retry = RETRY_FIRST;
    loop {
        match listen(&inner).await {
            // The connection ended after it was listening: try again soon.
            Ok(()) => retry = RETRY_FIRST,
            Err(e) => {
                tracing::debug!(error = %e, "listening for other replicas' intake failed; polling meanwhile");
            }
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(RETRY_MOST);
    }
}

/// One listening connection, for as long as it lasts.
async fn listen(inner: &Inner) -> Result<(), tokio_postgres::Error> {
    let connecting = inner.connect.connect(inner.tls.clone());
    let Ok(connected) = tokio::time::timeout(super::DB_TIMEOUT, connecting).await else {
        return Ok(());
    };
    let (client, mut connection) = connected?;
    // The connection answers the client's statements and carries the
    // notices: it is driven here, and each notice becomes a wake.
    let (heard, mut notices) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => {
                    if heard.send(()).is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    while notices.recv().await.is_some() {
        if inner.notify_wakes.load(Ordering::Relaxed) {
            inner.wake.notify_one();
        }
    }
    drop(client);
    driver.await.unwrap_or(Ok(()))
}
