//! The network shell: the accept loop and one task per connection. This is the only module
//! that owns sockets. Requests are read and handled in order; responses are written in request
//! order by a writer task, so a connection pipelines up to `queued.max.requests` requests.
//! Request memory is budgeted across all connections by `queued.max.request.bytes`.

use std::future::{poll_fn, Future};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use spate_client::protocol::frame::{peek_frame_size, split_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::api::{self, Part, Reply};
use crate::broker::Broker;
use crate::config::{BrokerConfig, FlushMode};
use crate::error::{BrokerError, Result};
use crate::metrics::RequestMetrics;

const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Responses smaller than this are gathered into one write when several are ready at once.
const WRITE_COALESCE_BYTES: usize = 64 * 1024;
/// Buffers handed to one vectored write (Linux refuses more than 1024).
const IOVECS_PER_WRITE: usize = 64;
/// How often the group coordinator's timers run: the resolution of session timeouts and
/// rebalance deadlines (Kafka's own timers are no finer in practice).
const GROUP_TICK: Duration = Duration::from_millis(100);
/// How often the transaction coordinator checks timeouts and unfinished markers (Kafka checks
/// every `transaction.abort.timed.out.transaction.cleanup.interval.ms`, 10 s by default).
const TXN_TICK: Duration = Duration::from_millis(1000);

/// A broker whose storage is open and whose listener is bound.
pub struct Server {
    pub broker: Arc<Broker>,
    listener: TcpListener,
}

impl Server {
    pub async fn start(config: BrokerConfig) -> Result<Server> {
        let config = config.validate()?;
        let listen = config.listen;
        // Bind first so a port clash fails fast, before the quorum is waited for.
        let listener = TcpListener::bind(listen).await.map_err(|e| BrokerError::io(listen.to_string(), e))?;
        let broker = Broker::open(config).await?;
        Ok(Server { broker, listener })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| self.broker.config.listen)
    }

    /// Serves until `shutdown` resolves, then flushes and closes every partition.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let Server { broker, listener } = self;
        info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), node_id = broker.config.node_id, "listening");
        let mut background = spawn_background_tasks(&broker);
        background.extend(watch_file_size_limit());
        let permits = Arc::new(Semaphore::new(broker.config.max_connections));
        let request_memory = RequestMemoryPool::new(broker.config.queued_max_request_bytes);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(x) => x,
                        Err(err) => {
                            // EMFILE and friends: back off instead of spinning.
                            warn!(error = %err, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        warn!(%peer, max = broker.config.max_connections, "connection refused: max.connections reached");
                        continue;
                    };
                    let broker = broker.clone();
                    let request_memory = request_memory.clone();
                    tokio::spawn(async move {
                        serve_connection(broker, request_memory, stream, peer).await;
                        drop(permit);
                    });
                }
            }
        }
        info!("shutting down");
        match broker.controlled_shutdown().await {
            Ok(0) => {}
            Ok(n) => warn!(partitions = n, "controlled shutdown: these partitions have no other in-sync replica"),
            Err(err) => {
                warn!(error = %err, "controlled shutdown failed; stopping anyway (leadership moves when the session expires)")
            }
        }
        for task in background {
            task.abort();
        }
        let controller = broker.controller.clone();
        tokio::task::spawn_blocking(move || broker.shutdown()).await.ok();
        controller.shutdown().await;
        Ok(())
    }
}

/// A write past the process's file-size limit (`ulimit -f`, RLIMIT_FSIZE) raises SIGXFSZ, whose
/// default action kills the process. Handling it turns that into what a full disk gives: the
/// write fails (EFBIG), the append is refused with KAFKA_STORAGE_ERROR and the broker keeps
/// serving everything else.
fn watch_file_size_limit() -> Option<tokio::task::JoinHandle<()>> {
    let mut signals = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(libc::SIGXFSZ)).ok()?;
    Some(tokio::spawn(async move {
        while signals.recv().await.is_some() {
            warn!("a write exceeded the file size limit (SIGXFSZ); the append fails, the broker keeps serving");
        }
    }))
}

fn spawn_background_tasks(broker: &Arc<Broker>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let b = broker.clone();
    let every = Duration::from_millis(broker.config.log_retention_check_interval_ms);
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let b = b.clone();
            let _ = tokio::task::spawn_blocking(move || b.housekeeping()).await;
        }
    }));
    // Group coordinator timers: session expiry, rebalance and initial-delay deadlines.
    let b = broker.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(GROUP_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let b = b.clone();
            let _ = tokio::task::spawn_blocking(move || b.groups.tick(&b, crate::broker::now_ms())).await;
        }
    }));
    // Transaction coordinator: timeouts, unfinished markers, expired transactional ids.
    let b = broker.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(TXN_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            crate::txn::TransactionCoordinator::tick(&b);
        }
    }));
    if broker.config.log_flush_mode == FlushMode::PageCache && broker.config.log_flush_interval_ms > 0 {
        let b = broker.clone();
        let every = Duration::from_millis(broker.config.log_flush_interval_ms);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                for topic in b.all_topics() {
                    for p in topic.local_partitions().filter(|p| p.has_unflushed()) {
                        b.mark_dirty(p);
                    }
                }
            }
        }));
    }
    tasks
}

/// `queued.max.request.bytes`: memory for requests, shared by every connection (Kafka's
/// `MemoryPool`). A connection takes a frame's size from it before reserving room for the frame
/// and gives it back once the request has been handled; while it is used up, connections that
/// need more stop being read.
#[derive(Clone)]
struct RequestMemoryPool {
    /// `None`: unbounded (`-1`).
    free_bytes: Option<Arc<Semaphore>>,
    capacity_bytes: usize,
}

/// Bytes of a [`RequestMemoryPool`], held until dropped.
struct RequestMemory {
    _bytes: Option<OwnedSemaphorePermit>,
}

impl RequestMemoryPool {
    fn new(queued_max_request_bytes: i64) -> RequestMemoryPool {
        match usize::try_from(queued_max_request_bytes) {
            Ok(bytes) => {
                let capacity_bytes = bytes.min(Semaphore::MAX_PERMITS);
                RequestMemoryPool { free_bytes: Some(Arc::new(Semaphore::new(capacity_bytes))), capacity_bytes }
            }
            Err(_) => RequestMemoryPool { free_bytes: None, capacity_bytes: usize::MAX },
        }
    }

    /// Waits until `bytes` are free, then holds them. `None` for a request larger than the
    /// whole pool, which could never be read (`validate()` keeps the pool at least
    /// `socket.request.max.bytes`, so only a broken invariant gets here).
    async fn reserve(&self, bytes: usize) -> Option<RequestMemory> {
        if bytes > self.capacity_bytes {
            return None;
        }
        let Some(free) = &self.free_bytes else {
            return Some(RequestMemory { _bytes: None });
        };
        if bytes == 0 {
            return Some(RequestMemory { _bytes: None });
        }
        let n = u32::try_from(bytes).ok()?;
        if let Ok(permit) = free.clone().try_acquire_many_owned(n) {
            return Some(RequestMemory { _bytes: Some(permit) });
        }
        debug!(bytes, free = free.available_permits(), "queued.max.request.bytes used up: not reading until it frees");
        // The semaphore is never closed; waiters are served in order, so a large request is not
        // starved by a stream of small ones.
        let permit = free.clone().acquire_many_owned(n).await.ok()?;
        Some(RequestMemory { _bytes: Some(permit) })
    }
}

/// A reply on its way to the connection's writer, with what its request metrics need (recorded
/// there, once the response is ready, so a delayed one needs no wrapping future).
struct Outgoing {
    reply: Reply,
    api_key: i16,
    started: Instant,
}

/// The response `fut` gives. Not ready yet (an acks=all produce, a long poll): what is gathered
/// in `small` is written first, or each earlier response would wait for this later one — a
/// pipelining producer's every ack one fsync round late. `None`: that write failed.
async fn ready<T>(
    mut fut: std::pin::Pin<Box<dyn Future<Output = T> + Send>>,
    writer: &mut OwnedWriteHalf,
    small: &mut BytesMut,
) -> Option<T> {
    if let Poll::Ready(response) = poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
        return Some(response);
    }
    if !small.is_empty() {
        writer.write_all(small).await.ok()?;
        small.clear();
    }
    Some(fut.await)
}

/// Writes `head` and then `parts`: runs of buffers with vectored writes, record batches left
/// in their segment files with `sendfile`.
async fn write_all_parts(writer: &mut OwnedWriteHalf, head: &[u8], parts: &[Part]) -> std::io::Result<()> {
    // Empty buffers are left out: `write_all_buffers` must never be left with only empty ones
    // to write (the kernel answers 0, read as the peer having gone).
    let mut buffers: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
    buffers.extend(Some(head).filter(|h| !h.is_empty()));
    for part in parts {
        match part {
            Part::Bytes(b) if b.is_empty() => {}
            Part::Bytes(b) => buffers.push(b),
            Part::File(slice) => {
                write_all_buffers(writer, &buffers).await?;
                buffers.clear();
                send_file(writer, slice).await?;
            }
        }
    }
    write_all_buffers(writer, &buffers).await
}

/// Sends a segment-file slice with `sendfile`, waiting whenever the socket is full.
async fn send_file(writer: &OwnedWriteHalf, slice: &crate::log::ReadSlice) -> std::io::Result<()> {
    let stream: &TcpStream = writer.as_ref();
    let mut sent = 0;
    while sent < slice.len() {
        stream.writable().await?;
        match stream.try_io(tokio::io::Interest::WRITABLE, || slice.send_to(stream, sent)) {
            Ok(0) => {
                // The frame's size is already out: the connection cannot go on.
                warn!(path = %slice.path().display(), sent, len = slice.len(),
                    "fetch: segment file shorter than the records being sent (truncated meanwhile); closing the connection");
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes `buffers` (none of them empty) with vectored writes (at most [`IOVECS_PER_WRITE`] a
/// call, below the kernel's IOV_MAX), resuming after short writes.
async fn write_all_buffers(writer: &mut OwnedWriteHalf, buffers: &[&[u8]]) -> std::io::Result<()> {
    debug_assert!(buffers.iter().all(|b| !b.is_empty()));
    let (mut index, mut offset) = (0usize, 0usize);
    while index < buffers.len() {
        let mut slices = [IoSlice::new(&[]); IOVECS_PER_WRITE];
        let mut count = 0;
        for (i, buffer) in buffers[index..].iter().take(IOVECS_PER_WRITE).enumerate() {
            slices[i] = IoSlice::new(if i == 0 { &buffer[offset..] } else { buffer });
            count += 1;
        }
        let mut written = writer.write_vectored(&slices[..count]).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        // Step past what went out: whole buffers, then into the next one.
        while written > 0 {
            let left = buffers[index].len() - offset;
            if written >= left {
                written -= left;
                index += 1;
                offset = 0;
            } else {
                offset += written;
                written = 0;
            }
        }
    }
    Ok(())
}

async fn serve_connection(broker: Arc<Broker>, request_memory: RequestMemoryPool, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Outgoing>(broker.config.queued_max_requests);
    let write_task = tokio::spawn(async move {
        let metrics = RequestMetrics::get();
        // Small responses that are ready together go out in one write; a large one (a fetch
        // carrying record batches) is written from its own buffers, never copied again.
        let mut small = BytesMut::new();
        while let Some(outgoing) = rx.recv().await {
            let mut next = Some(outgoing);
            while let Some(Outgoing { reply, api_key, started }) = next.take() {
                let parts: Vec<Part> = match reply {
                    Reply::Now(b) => vec![Part::Bytes(b)],
                    Reply::Later(fut) => match ready(fut, &mut writer, &mut small).await {
                        Some(b) => vec![Part::Bytes(b)],
                        None => return,
                    },
                    Reply::Gathered(fut) => match ready(fut, &mut writer, &mut small).await {
                        Some(parts) => parts,
                        None => return,
                    },
                    Reply::Nothing | Reply::Close(_) | Reply::Blocking(_) | Reply::Ordered(_) => continue,
                };
                // Measured when the response is ready (after the fsync or the long poll).
                metrics.record(api_key, started.elapsed());
                let len: usize = parts.iter().map(Part::len).sum();
                if len == 0 {
                    return; // a response failed to encode (already logged): close the connection
                }
                if len >= WRITE_COALESCE_BYTES || parts.iter().any(|p| matches!(p, Part::File(_))) {
                    if write_all_parts(&mut writer, &small, &parts).await.is_err() {
                        return;
                    }
                    small.clear();
                } else {
                    for part in &parts {
                        if let Part::Bytes(b) = part {
                            small.extend_from_slice(b);
                        }
                    }
                }
                if small.len() < WRITE_COALESCE_BYTES {
                    next = rx.try_recv().ok();
                }
            }
            if !small.is_empty() {
                if writer.write_all(&small).await.is_err() {
                    return;
                }
                small.clear();
            }
        }
    });
    let max_frame = broker.config.socket_request_max_bytes as usize;
    let mut buf = BytesMut::with_capacity(READ_BUFFER_BYTES);
    // The pool's share for the frame at the front of `buf`, taken once its size is known and
    // before room is reserved for it.
    let mut frame_memory: Option<RequestMemory> = None;
    'read: loop {
        if frame_memory.is_none() && buf.capacity() > 2 * READ_BUFFER_BYTES {
            // Between frames, drop the room a large one needed: `reserve` would otherwise
            // reclaim that allocation and keep it with this connection, outside the pool.
            let rest = buf.split();
            buf = BytesMut::with_capacity(READ_BUFFER_BYTES.max(rest.len()));
            buf.extend_from_slice(&rest);
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(READ_BUFFER_BYTES);
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) => {
                debug!(%peer, error = %err, "read failed");
                break;
            }
        }
        loop {
            let size = match peek_frame_size(&buf, max_frame) {
                Ok(Some(size)) => size,
                Ok(None) => break,
                Err(err) => {
                    warn!(%peer, error = %err, "closing connection: bad frame");
                    break 'read;
                }
            };
            if frame_memory.is_none() {
                // While the pool is used up this connection is not read: back-pressure, as
                // Kafka mutes channels when its memory pool is exhausted.
                let Some(memory) = request_memory.reserve(size).await else {
                    warn!(%peer, size, "closing connection: request larger than queued.max.request.bytes");
                    break 'read;
                };
                frame_memory = Some(memory);
            }
            let Some(frame) = split_frame(&mut buf, size) else { break };
            let started = Instant::now();
            // The API key (the frame's first two bytes) for the request metrics.
            let api_key = frame.get(..2).map_or(-1, |k| i16::from_be_bytes([k[0], k[1]]));
            let mut reply = api::handle(&broker, frame, Some(peer));
            if let Reply::Ordered(work) = reply {
                reply = work.await;
            }
            if let Reply::Blocking(work) = reply {
                // Awaited before the next frame is handled, so appends stay in request order.
                reply = match tokio::task::spawn_blocking(work).await {
                    Ok(reply) => reply,
                    Err(err) => Reply::Close(format!("request handler failed: {err}")),
                };
            }
            // Handled: the request's share goes back to the pool, as Kafka's request handler
            // releases its buffer. Holding it until a pending reply is written would let
            // produces waiting for replication keep the followers' fetches from being read.
            frame_memory = None;
            match reply {
                Reply::Nothing => RequestMetrics::get().record(api_key, started.elapsed()),
                Reply::Close(reason) => {
                    warn!(%peer, reason, "closing connection: bad request");
                    break 'read;
                }
                reply => {
                    if tx.send(Outgoing { reply, api_key, started }).await.is_err() {
                        break 'read;
                    }
                }
            }
        }
    }
    drop(tx);
    drop(frame_memory);
    // Let responses already accepted be written before the socket closes.
    let _ = write_task.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `fut` once: `Some` if it completed without waiting.
    async fn now<F: Future>(fut: F) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        match poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
            Poll::Ready(output) => Some(output),
            Poll::Pending => None,
        }
    }

    #[tokio::test]
    async fn request_memory_is_bounded_by_the_pool_and_released_on_drop() {
        let pool = RequestMemoryPool::new(100);
        let first = now(pool.reserve(60)).await.expect("free").expect("fits");
        let second = now(pool.reserve(40)).await.expect("free").expect("fits");
        assert!(now(pool.reserve(1)).await.is_none(), "the pool is used up");

        // A waiter gets its bytes once enough are released, not before.
        let mut waiting = std::pin::pin!(pool.reserve(50));
        assert!(now(waiting.as_mut()).await.is_none());
        drop(second);
        assert!(now(waiting.as_mut()).await.is_none(), "40 of 50 bytes free");
        drop(first);
        let third = now(waiting.as_mut()).await.expect("released").expect("fits");
        assert!(now(pool.reserve(51)).await.is_none());
        let fourth = now(pool.reserve(50)).await.expect("free").expect("fits");
        drop((third, fourth));
        let whole = now(pool.reserve(100)).await.expect("free").expect("fits");
        drop(whole);
    }

    #[tokio::test]
    async fn a_request_larger_than_the_pool_is_refused_not_awaited() {
        let pool = RequestMemoryPool::new(100);
        assert!(now(pool.reserve(101)).await.expect("answers at once").is_none());
        let _held = now(pool.reserve(100)).await.unwrap().unwrap();
        assert!(now(pool.reserve(101)).await.expect("answers at once").is_none());
    }

    #[tokio::test]
    async fn minus_one_is_unbounded() {
        let pool = RequestMemoryPool::new(-1);
        let held: Vec<_> = (0..4).map(|_| now(pool.reserve(i32::MAX as usize))).collect();
        for reserve in held {
            assert!(reserve.await.expect("never waits").is_some());
        }
    }
}
