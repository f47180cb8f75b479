//! Shared queues: the process-wide registry behind `proxy_register_shared_queue`,
//! `proxy_resolve_shared_queue`, `proxy_enqueue_shared_queue` and `proxy_dequeue_shared_queue`.
//!
//! Envoy's model, which filters rely on: a queue is named by (VM id, name); the VM that
//! registers it is its one consumer and gets `proxy_on_queue_ready(root, queue)` after every
//! enqueue, on its own thread; any VM of any worker may resolve it and enqueue. When several VMs
//! register the same queue (one per worker), the last one to register consumes it, as in Envoy.
//! A filter's VM id is its name, so its instances on every worker share their queues.
//!
//! The consumer is told through its [`QueueWaker`] (the worker's channel), never called from
//! the enqueuing thread: callbacks run only on the VM's own worker. Bounds: a queue holds at
//! most [`MAX_QUEUE_ITEMS`] items and [`MAX_QUEUE_BYTES`] bytes; an enqueue past them fails
//! (`INTERNAL_FAILURE`) instead of letting a consumer that stopped draining exhaust memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

/// The most items one queue holds.
pub const MAX_QUEUE_ITEMS: usize = 100_000;
/// The most bytes one queue holds.
pub const MAX_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// The largest item.
pub const MAX_ITEM_BYTES: usize = 1024 * 1024;

/// An item was enqueued on `queue`, which `instance` consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueReady {
    /// [`FilterInstance::id`](super::FilterInstance::id) of the consumer.
    pub instance: u64,
    pub queue: u32,
}

/// Tells a worker that one of its VMs has a queue item to handle. Must not block.
#[derive(Clone)]
pub struct QueueWaker(Arc<dyn Fn(QueueReady) + Send + Sync>);

impl QueueWaker {
    pub fn new(wake: impl Fn(QueueReady) + Send + Sync + 'static) -> Self {
        Self(Arc::new(wake))
    }

    fn wake(&self, ready: QueueReady) {
        (self.0)(ready)
    }
}

impl std::fmt::Debug for QueueWaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueWaker")
    }
}

/// Why a queue operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QueueError {
    /// No such queue.
    NotFound,
    /// The queue is empty.
    Empty,
    /// The queue is full, or the item too large.
    Full,
}

struct Consumer {
    instance: u64,
    waker: Option<QueueWaker>,
}

struct Queue {
    items: VecDeque<Vec<u8>>,
    bytes: usize,
    consumer: Option<Consumer>,
}

#[derive(Default)]
struct Registry {
    ids: HashMap<(Arc<str>, Box<str>), u32>,
    queues: HashMap<u32, Queue>,
    next_id: u32,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Registers (or takes over) queue `name` of `vm_id` with `instance` as its consumer; returns
/// its id.
pub(crate) fn register(vm_id: &Arc<str>, name: &str, instance: u64, waker: Option<QueueWaker>) -> u32 {
    let mut registry = registry();
    let key = (vm_id.clone(), Box::<str>::from(name));
    let id = match registry.ids.get(&key) {
        Some(&id) => id,
        None => {
            registry.next_id = registry.next_id.wrapping_add(1).max(1);
            let id = registry.next_id;
            registry.ids.insert(key, id);
            registry.queues.insert(
                id,
                Queue {
                    items: VecDeque::new(),
                    bytes: 0,
                    consumer: None,
                },
            );
            id
        }
    };
    if let Some(queue) = registry.queues.get_mut(&id) {
        queue.consumer = Some(Consumer { instance, waker });
    }
    id
}

/// The id of queue `name` of `vm_id`.
pub(crate) fn resolve(vm_id: &str, name: &str) -> Option<u32> {
    let registry = registry();
    registry
        .ids
        .iter()
        .find(|((vm, queue), _)| &**vm == vm_id && &**queue == name)
        .map(|(_, &id)| id)
}

/// Appends `item` to queue `id` and tells its consumer.
pub(crate) fn enqueue(id: u32, item: Vec<u8>) -> Result<(), QueueError> {
    let notify = {
        let mut registry = registry();
        let queue = registry.queues.get_mut(&id).ok_or(QueueError::NotFound)?;
        if item.len() > MAX_ITEM_BYTES
            || queue.items.len() >= MAX_QUEUE_ITEMS
            || queue.bytes + item.len() > MAX_QUEUE_BYTES
        {
            return Err(QueueError::Full);
        }
        queue.bytes += item.len();
        queue.items.push_back(item);
        queue
            .consumer
            .as_ref()
            .and_then(|c| c.waker.clone().map(|w| (w, c.instance)))
    };
    // Outside the lock: the waker sends on a channel, and must never wait on the registry.
    if let Some((waker, instance)) = notify {
        waker.wake(QueueReady { instance, queue: id });
    }
    Ok(())
}

/// Takes the oldest item of queue `id`.
pub(crate) fn dequeue(id: u32) -> Result<Vec<u8>, QueueError> {
    let mut registry = registry();
    let queue = registry.queues.get_mut(&id).ok_or(QueueError::NotFound)?;
    let item = queue.items.pop_front().ok_or(QueueError::Empty)?;
    queue.bytes -= item.len();
    Ok(item)
}

/// Forgets `instance` as a consumer (it is gone); its queues keep their items for the next VM
/// that registers them.
pub(crate) fn release(instance: u64) {
    let mut registry = registry();
    for queue in registry.queues.values_mut() {
        if queue.consumer.as_ref().is_some_and(|c| c.instance == instance) {
            queue.consumer = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn the_last_registrant_consumes_and_is_told_of_every_item() {
        let vm: Arc<str> = Arc::from("queue-test/vm");
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let waker = QueueWaker::new(move |ready| {
            let _ = tx.lock().unwrap().send(ready);
        });
        let first = register(&vm, "events", 1001, None);
        let id = register(&vm, "events", 1002, Some(waker));
        assert_eq!(first, id, "the same (vm, name) is the same queue");
        assert_eq!(resolve("queue-test/vm", "events"), Some(id));
        assert_eq!(resolve("queue-test/other", "events"), None);

        enqueue(id, b"a".to_vec()).unwrap();
        enqueue(id, b"b".to_vec()).unwrap();
        assert_eq!(
            rx.try_recv().unwrap(),
            QueueReady {
                instance: 1002,
                queue: id
            }
        );
        assert_eq!(
            rx.try_recv().unwrap(),
            QueueReady {
                instance: 1002,
                queue: id
            }
        );
        assert_eq!(dequeue(id).unwrap(), b"a");
        assert_eq!(dequeue(id).unwrap(), b"b");
        assert_eq!(dequeue(id), Err(QueueError::Empty));
        assert_eq!(dequeue(u32::MAX), Err(QueueError::NotFound));

        release(1002);
        enqueue(id, b"c".to_vec()).unwrap();
        assert!(rx.try_recv().is_err(), "a released consumer is not told");
        assert_eq!(enqueue(id, vec![0; MAX_ITEM_BYTES + 1]), Err(QueueError::Full));
    }
}
