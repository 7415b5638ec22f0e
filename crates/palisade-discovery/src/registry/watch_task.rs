//! The watch of a registry that is followed by a task of its own (DNS, etcd):
//! the task sends what it learns down a bounded channel, the watch stream
//! reads it. One way for every such registry, so each gets the same
//! behaviour: without a Tokio runtime the stream says `Down` once and ends;
//! dropping the stream closes the channel, and the task ends at its next send.

use futures::StreamExt;
use tokio::sync::mpsc;

use super::{WatchEvent, WatchStream};

/// The sending half a watch task writes to.
pub(crate) type WatchSender = mpsc::Sender<WatchEvent>;

/// A watch followed by `task`, spawned on the current Tokio runtime with the
/// sending half of a channel of `capacity` events. `what` completes "no Tokio
/// runtime to ..." in the `Down` event sent when there is no runtime.
pub(crate) fn spawn_watch<F, Fut>(capacity: usize, what: &str, task: F) -> WatchStream
where
    F: FnOnce(WatchSender) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(capacity);
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(task(tx));
        }
        Err(_) => {
            let _ = tx.try_send(WatchEvent::Down {
                reason: format!("no Tokio runtime to {what}"),
            });
        }
    }
    from_receiver(rx)
}

/// A watch that only says `event` and ends (a service the registry cannot follow).
#[cfg_attr(not(feature = "dns"), allow(dead_code))]
pub(crate) fn only(event: WatchEvent) -> WatchStream {
    futures::stream::once(futures::future::ready(event)).boxed()
}

fn from_receiver(rx: mpsc::Receiver<WatchEvent>) -> WatchStream {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|event| (event, rx)) }).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_task_feeds_the_stream_and_a_dropped_stream_ends_the_task() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let mut watch = spawn_watch(1, "test", |tx| async move {
            let _ = tx.send(WatchEvent::Reset(Vec::new())).await;
            // Blocks until the stream is dropped: the channel then closes.
            while tx.send(WatchEvent::Reset(Vec::new())).await.is_ok() {}
            let _ = done_tx.send(());
        });
        assert!(matches!(watch.next().await, Some(WatchEvent::Reset(_))));
        drop(watch);
        done_rx.await.unwrap();
    }

    #[test]
    fn without_a_runtime_the_watch_says_down_once_and_ends() {
        // Built outside any runtime; read on one made afterwards.
        let mut watch = spawn_watch(1, "resolve from", |_| async {});
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        match runtime.block_on(watch.next()) {
            Some(WatchEvent::Down { reason }) => assert_eq!(reason, "no Tokio runtime to resolve from"),
            other => panic!("expected Down, got {other:?}"),
        }
        assert!(runtime.block_on(watch.next()).is_none());
    }
}
