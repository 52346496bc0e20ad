//! A single-node ledger: prepares and signs events, then appends them through the store's apply
//! path with group commit (one flush shared by every event that arrived while the previous flush
//! was running).

use std::path::Path;
use std::sync::Arc;

use ed25519_dalek::{Signature, Signer, SigningKey};
use rand::RngCore;
use tokio::sync::{mpsc, oneshot};

use crate::entry::{commitment, CommittedComponent, EntryBody, EventInput, Opening};
use crate::error::LedgerError;
use crate::keys::NodeKey;
use crate::sth::SignedTreeHead;
use crate::store::{AppendCommand, ApplyOutcome, Command, Store};

/// Tunables of the group-commit writer.
#[derive(Debug, Clone)]
pub struct LedgerOptions {
    /// This node's id, written into every entry and tree head.
    pub node_id: u64,
    /// Most commands applied under one flush. 1 gives one flush per entry (the benchmark's
    /// baseline).
    pub max_batch: usize,
    /// Capacity of the queue in front of the writer; callers wait when it is full.
    pub queue: usize,
    /// sled's page cache, bytes.
    pub cache_bytes: u64,
}

impl Default for LedgerOptions {
    fn default() -> Self {
        Self {
            node_id: 1,
            max_batch: 4096,
            queue: 8192,
            cache_bytes: crate::store::DEFAULT_CACHE_BYTES,
        }
    }
}

type Reply = oneshot::Sender<Result<ApplyOutcome, Arc<LedgerError>>>;

/// The single-node ledger.
pub struct Ledger {
    store: Arc<Store>,
    key: NodeKey,
    node_id: u64,
    tx: mpsc::Sender<(Command, Reply)>,
    writer: tokio::task::JoinHandle<()>,
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

/// Builds the signed command for an event (an entry of version 1, which every release reads):
/// the node's clock, salts and signature are fixed here, before apply.
pub fn prepare(
    event: EventInput,
    author: &str,
    node_id: u64,
    key: &impl Signer<Signature>,
    recorded_at_ms: i64,
) -> Result<AppendCommand, LedgerError> {
    prepare_at(
        crate::version::FORMAT_V1,
        event,
        author,
        node_id,
        key,
        recorded_at_ms,
    )
}

/// The command format from which appends carry no signature of their own (entry version 2).
pub const UNSIGNED_FORMAT: u8 = 3;

/// [`prepare`] for a cluster that applies command format `format`: from format 3 on the body is
/// not signed (an entry of version 2, authenticated by the signed tree heads that cover it),
/// which saves the Ed25519 signature per event; below it the body is signed as before.
pub fn prepare_at(
    format: u8,
    event: EventInput,
    author: &str,
    node_id: u64,
    key: &impl Signer<Signature>,
    recorded_at_ms: i64,
) -> Result<AppendCommand, LedgerError> {
    let event = event.validate()?;
    if author.is_empty()
        || author.len() > crate::entry::MAX_FIELD
        || author.chars().any(char::is_control)
    {
        return Err(LedgerError::InvalidEvent(
            crate::entry::InvalidEvent::TooLong { field: "author" },
        ));
    }
    // Salts come from the thread's cryptographically secure generator (ChaCha, seeded and
    // reseeded from the OS), which costs no system call per event.
    let mut salts = vec![0u8; 32 * event.components.len()];
    rand::thread_rng().fill_bytes(&mut salts);
    let mut openings = Vec::with_capacity(event.components.len());
    let mut components = Vec::with_capacity(event.components.len());
    for (c, chunk) in event.components.into_iter().zip(salts.chunks_exact(32)) {
        let mut salt = [0u8; 32];
        salt.copy_from_slice(chunk);
        components.push(CommittedComponent {
            commitment: commitment(&salt, &c.name, c.class, &c.value),
            name: c.name,
            class: c.class,
        });
        openings.push(Opening {
            value: c.value,
            salt,
        });
    }
    let body = EntryBody {
        recorded_at_ms,
        node_id,
        author: author.to_owned(),
        kind: event.kind,
        device_id: event.device_id,
        occurred_at: event.occurred_at,
        corrects: event.corrects,
        event_id: event.event_id,
        components,
    };
    let signature = (format < UNSIGNED_FORMAT).then(|| body.sign(key));
    let mut bytes = Vec::with_capacity(256);
    body.encode(&mut bytes);
    Ok(AppendCommand {
        body: bytes,
        signature,
        openings,
    })
}

/// Current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Ledger {
    /// Opens the ledger in `dir` (store in `dir/ledger`, key in `dir/node.key`) and starts the
    /// writer task. Must be called inside a tokio runtime.
    pub async fn open(dir: &Path, options: LedgerOptions) -> Result<Self, LedgerError> {
        crate::store::create_dir_durable(dir)?;
        let key = NodeKey::new(crate::keys::load_or_create(&dir.join("node.key"))?)?;
        let store_dir = dir.join("ledger");
        let cache_bytes = options.cache_bytes;
        let store =
            tokio::task::spawn_blocking(move || Store::open_with_cache(&store_dir, cache_bytes))
                .await
                .map_err(|e| LedgerError::Io {
                    path: dir.to_owned(),
                    source: std::io::Error::other(e),
                })??;
        let store = Arc::new(store);
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let writer = tokio::spawn(writer_loop(store.clone(), rx, options.max_batch.max(1)));
        let ledger = Ledger {
            store,
            key,
            node_id: options.node_id,
            tx,
            writer,
        };
        let public_key = ledger.key.verifying_key().to_bytes();
        match ledger
            .submit(Command::RegisterNode {
                node_id: options.node_id,
                public_key,
            })
            .await?
        {
            ApplyOutcome::NodeRegistered { .. } => Ok(ledger),
            ApplyOutcome::Refused { reason } => Err(LedgerError::Refused(reason)),
            other => Err(LedgerError::Refused(format!(
                "unexpected outcome {other:?}"
            ))),
        }
    }

    /// The store, for reads.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// This node's signing key.
    pub fn signing_key(&self) -> &SigningKey {
        self.key.signing_key()
    }

    /// Appends an event and answers once it is on disk.
    pub async fn append(
        &self,
        event: EventInput,
        author: &str,
    ) -> Result<ApplyOutcome, LedgerError> {
        let cmd = self.prepare(event, author)?;
        self.submit(Command::Append(cmd)).await
    }

    /// The command for an event, as this ledger writes it: an entry of version 2 (no signature
    /// of its own). A single-node ledger applies the newest command format, and every export or
    /// receipt of it is cut at a head signed by this node's key ([`Ledger::tree_head`], or the
    /// checkpoint [`Ledger::checkpoint`] recorded), the key that would have signed each entry.
    pub fn prepare(&self, event: EventInput, author: &str) -> Result<AppendCommand, LedgerError> {
        prepare_at(
            crate::version::FORMAT,
            event,
            author,
            self.node_id,
            &self.key,
            now_ms(),
        )
    }

    /// Records a checkpoint: a head over everything on disk now, signed by this node, so that
    /// what was written is covered by a recorded signed head.
    pub async fn checkpoint(&self) -> Result<ApplyOutcome, LedgerError> {
        self.submit(Command::Checkpoint(self.tree_head()?)).await
    }

    /// Sends a prepared command to the writer and waits for its durable outcome.
    pub async fn submit(&self, cmd: Command) -> Result<ApplyOutcome, LedgerError> {
        self.enqueue(cmd).await?.await
    }

    /// Queues a command (waiting while the queue is full) and returns a future of its durable
    /// outcome. Commands are applied in the order they were queued, so a caller can keep many in
    /// flight and still know their order.
    pub async fn enqueue(
        &self,
        cmd: Command,
    ) -> Result<impl std::future::Future<Output = Result<ApplyOutcome, LedgerError>>, LedgerError>
    {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((cmd, reply))
            .await
            .map_err(|_| LedgerError::ShuttingDown)?;
        Ok(async move {
            match rx.await {
                Ok(Ok(o)) => Ok(o),
                Ok(Err(e)) => Err(LedgerError::Refused(format!("write failed: {e}"))),
                Err(_) => Err(LedgerError::ShuttingDown),
            }
        })
    }

    /// Signs a tree head over everything on disk now.
    pub fn tree_head(&self) -> Result<SignedTreeHead, LedgerError> {
        let size = self.store.size();
        let root = self.store.root(size)?;
        Ok(SignedTreeHead::sign(
            size,
            root,
            now_ms(),
            self.node_id,
            &self.key,
        ))
    }
}

/// A batch that is applied and whose flush is running.
struct InFlight {
    flush: tokio::task::JoinHandle<Result<(), LedgerError>>,
    replies: Vec<Reply>,
    outcomes: Vec<ApplyOutcome>,
}

impl InFlight {
    /// Waits for the batch's flush and answers its callers.
    async fn finish(mut self, store: &Store) {
        let done = (&mut self.flush).await;
        self.answer(store, done);
    }

    /// Answers the batch's callers once its flush has ended: their outcomes if the flush
    /// succeeded, the error otherwise.
    fn answer(self, store: &Store, done: Result<Result<(), LedgerError>, tokio::task::JoinError>) {
        let result = match done {
            Ok(r) => r,
            Err(e) => Err(LedgerError::Io {
                path: store.path().join("db"),
                source: std::io::Error::other(e),
            }),
        };
        match result {
            Ok(()) => {
                for (reply, o) in self.replies.into_iter().zip(self.outcomes) {
                    let _ = reply.send(Ok(o));
                }
            }
            Err(e) => refuse(self.replies, e),
        }
    }
}

/// What the writer woke up for.
enum Event {
    Command(Option<(Command, Reply)>),
    Flushed(Result<Result<(), LedgerError>, tokio::task::JoinError>),
}

fn refuse(replies: Vec<Reply>, e: LedgerError) {
    tracing::error!(error = %e, "ledger write failed; refusing the batch");
    let e = Arc::new(e);
    for reply in replies {
        let _ = reply.send(Err(e.clone()));
    }
}

/// Group commit, pipelined: the commands queued while the writer was busy (at most `max_batch`)
/// are applied as one batch, then flushed on a blocking thread while the writer applies the next
/// batch. Each batch is answered only after a flush that started after its apply completed, so
/// every acknowledgement still follows a sled flush (ending in `fdatasync`) covering it, and one flush
/// covers at most `max_batch` commands' acknowledgements (`max_batch = 1`: one flush per entry).
async fn writer_loop(
    store: Arc<Store>,
    mut rx: mpsc::Receiver<(Command, Reply)>,
    max_batch: usize,
) {
    let mut in_flight: Option<InFlight> = None;
    loop {
        let next = match in_flight.as_mut() {
            None => Event::Command(rx.recv().await),
            Some(f) => tokio::select! {
                // A flush that ended before new work came is answered first.
                biased;
                done = &mut f.flush => Event::Flushed(done),
                m = rx.recv() => Event::Command(m),
            },
        };
        let (cmd, reply) = match next {
            Event::Flushed(done) => {
                if let Some(f) = in_flight.take() {
                    f.answer(&store, done);
                }
                continue;
            }
            Event::Command(Some(m)) => m,
            Event::Command(None) => {
                if let Some(f) = in_flight.take() {
                    f.finish(&store).await;
                }
                return;
            }
        };
        let mut cmds = Vec::with_capacity(max_batch.min(1024));
        let mut replies = Vec::with_capacity(max_batch.min(1024));
        cmds.push(cmd);
        replies.push(reply);
        while cmds.len() < max_batch {
            match rx.try_recv() {
                Ok((cmd, reply)) => {
                    cmds.push(cmd);
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        let applied = store.apply(&cmds, &[]);
        // The previous batch is answered once its own flush is done; this batch's flush starts
        // after that, so that each acknowledgement waits for exactly one flush begun after its
        // apply.
        if let Some(f) = in_flight.take() {
            f.finish(&store).await;
        }
        match applied {
            Ok(outcomes) => {
                let s = store.clone();
                in_flight = Some(InFlight {
                    flush: tokio::task::spawn_blocking(move || s.flush_blocking()),
                    replies,
                    outcomes,
                });
            }
            Err(e) => refuse(replies, e),
        }
    }
}
