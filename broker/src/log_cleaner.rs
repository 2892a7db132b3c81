//! The log cleaner thread: every `log.cleaner.backoff.ms` it offers each partition to
//! [`Partition::clean`], which compacts those whose `cleanup.policy` includes `compact` and that
//! are due (see `log::cleaner`). One thread with one [`OffsetMap`] sized by
//! `log.cleaner.dedupe.buffer.size`, as Kafka's default of one cleaner thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{info, warn};

use crate::broker::{now_ms, Broker};
use crate::log::{LogError, OffsetMap};
use crate::BrokerError;

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

/// Handle to the cleaner thread; idle until [`LogCleaner::start`].
#[derive(Default)]
pub struct LogCleaner {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl LogCleaner {
    /// Starts the thread if `log.cleaner.enable` is set. It holds the broker weakly, so that it
    /// never keeps a dropped broker alive.
    pub fn start(&self, broker: &Arc<Broker>) {
        if !broker.config.log_cleaner_enable {
            return;
        }
        let weak = Arc::downgrade(broker);
        let shared = Arc::clone(&self.shared);
        let backoff = Duration::from_millis(broker.config.log_cleaner_backoff_ms);
        let buffer_bytes = usize::try_from(broker.config.log_cleaner_dedupe_buffer_size).unwrap_or(usize::MAX);
        let thread = std::thread::Builder::new()
            .name("spate-log-cleaner".into())
            .spawn(move || run(&weak, &shared, backoff, buffer_bytes))
            .expect("spawning the log cleaner thread at startup");
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
    }

    /// Stops the thread, cancelling a pass in progress (its uncommitted files are removed; what
    /// it swapped in already stays).
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        {
            let _guard = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

fn run(broker: &Weak<Broker>, shared: &Shared, backoff: Duration, buffer_bytes: usize) {
    let mut map = OffsetMap::new(buffer_bytes);
    loop {
        {
            let guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            let _ = shared.wake.wait_timeout(guard, backoff);
        }
        let Some(broker) = broker.upgrade() else {
            return;
        };
        for topic in broker.all_topics() {
            for partition in topic.local_partitions() {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                match partition.clean(&mut map, now_ms(), &shared.stop) {
                    Ok(None) => {}
                    Ok(Some(stats)) => info!(
                        partition = %partition.tp,
                        segments_replaced = stats.segments_replaced,
                        bytes_read = stats.bytes_read,
                        bytes_written = stats.bytes_written,
                        records_removed = stats.records_removed,
                        batches_removed = stats.batches_removed,
                        first_dirty_offset = stats.first_dirty_offset,
                        "log cleaned"
                    ),
                    Err(BrokerError::Log(LogError::CleaningCancelled { .. })) => return,
                    Err(error) => warn!(partition = %partition.tp, %error, "log cleaning failed; retrying next round"),
                }
            }
        }
    }
}
