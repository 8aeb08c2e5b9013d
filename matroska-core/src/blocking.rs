//! Running the cache's async operations from plain sync code: [`block_on`].
//!
//! The cache is async (its Redis backend talks over Tokio sockets), and its fill path needs a
//! Tokio runtime context even on the in-memory backend: polling another process's fill lease
//! sleeps on Tokio's timer, a fill lease abandoned by a panicking loader is released by a task
//! spawned on the current runtime, and the Redis backend's calls carry Tokio time-outs. A bare
//! executor (`futures::executor::block_on`) would panic there ("there is no reactor running").
//! [`block_on`] runs a future to completion on the calling thread *inside* a runtime context:
//!
//! | The calling thread                                               | Runs on                      |
//! |------------------------------------------------------------------|------------------------------|
//! | has no runtime (a plain `std::thread`, `fn main`)                | the process-wide runtime     |
//! | a blocking thread of a multi-thread runtime (`spawn_blocking`), or a thread in its `block_in_place` or under its `enter()` guard | that runtime  |
//! | the same, of a current-thread runtime                            | the process-wide runtime     |
//! | drives async tasks (inside a task, or in `Runtime::block_on`)    | nothing: [`Error::AsyncContext`] |
//!
//! The **process-wide runtime** is a current-thread Tokio runtime started on first use, driven
//! by one thread of its own (`matroska-blocking`) that only runs its timers, its I/O and the few
//! tasks the cache spawns; the future itself still runs on the calling thread. A current-thread
//! runtime of the application is not used even on its own blocking threads: its timers and
//! sockets advance only while some thread is inside its `Runtime::block_on`, which may not be
//! the case while this thread waits.
//!
//! A Redis backend keeps its connection on the runtime it was made in. Made in a multi-thread
//! runtime, it serves blocking calls from any thread while that runtime runs. Made in a
//! current-thread runtime, it answers only while a thread drives that runtime
//! (`Runtime::block_on` in progress): otherwise its calls end at the backend's time-out, and a
//! cached read degrades to the database as for any backend failure.
//!
//! **Why an error in async code.** Blocking a thread that drives tasks stalls them, and on a
//! current-thread runtime deadlocks whatever the future waits for on that runtime; Tokio's own
//! `Handle::block_on` panics there. Tokio offers no call that says whether the thread is
//! driving tasks (tokio-rs/tokio#7769: `task::try_id` is also set on `spawn_blocking` threads,
//! and not set in `Runtime::block_on`), so [`block_on`] reads the one trace a task's poll
//! leaves that a blocking thread lacks: Tokio's cooperative budget, which is set while a task
//! (or `Runtime::block_on`'s future) is polled and lifted on blocking threads and in
//! `block_in_place`. It is read through the public [`tokio::task::coop::poll_proceed`] and left
//! as it was. Not seen: code inside [`tokio::task::unconstrained`], which lifts the budget too;
//! there Tokio's own panic remains.

use std::future::Future;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use tokio::runtime::{Handle, RuntimeFlavor};

use crate::{Error, Result};

/// Runs `future` to completion on the calling thread, in a Tokio runtime context, for the
/// blocking forms of async operations (see the [module docs](self) for which runtime).
///
/// ```
/// use matroska_core::{Cache, blocking};
///
/// // Plain sync code: no runtime anywhere.
/// let cache = Cache::memory();
/// blocking::block_on(cache.put("greeting", &"hello", &[], None))??;
/// let hit: Option<String> = blocking::block_on(cache.get("greeting"))??;
/// assert_eq!(hit.as_deref(), Some("hello"));
/// # Ok::<_, matroska_core::Error>(())
/// ```
///
/// # Errors
/// [`Error::AsyncContext`] when the calling thread is driving async tasks (inside a task, or
/// inside `Runtime::block_on`): `.await` the async form there, or call this from
/// [`tokio::task::spawn_blocking`].
pub fn block_on<F: Future>(future: F) -> Result<F::Output> {
    let Ok(current) = Handle::try_current() else {
        // No runtime on this thread: nothing is entered, so `Handle::block_on` cannot panic.
        return Ok(process_runtime().block_on(future));
    };
    if polling_a_task() {
        return Err(Error::AsyncContext);
    }
    Ok(match current.runtime_flavor() {
        // Its workers drive its timers and sockets whatever this thread does.
        RuntimeFlavor::MultiThread => current.block_on(future),
        // A current-thread runtime's timers and sockets advance only inside its
        // `Runtime::block_on`, which no thread may be in now.
        _ => process_runtime().block_on(future),
    })
}

/// The process-wide runtime's handle, started on first use: a current-thread runtime driven by
/// a thread of its own, so futures blocked on from any thread get its timers and I/O.
fn process_runtime() -> &'static Handle {
    static RUNTIME: OnceLock<Handle> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        // Without a runtime nothing of the cache can run; failing to build one means the
        // process cannot create a thread or an epoll instance: a panic, as `#[tokio::main]`.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("matroska-blocking")
            .build()
            .expect("could not start matroska's runtime for blocking calls");
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("matroska-blocking".into())
            // Drives the runtime for the life of the process: `pending` never completes.
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .expect("could not start matroska's runtime thread for blocking calls");
        handle
    })
}

/// How many units of Tokio's cooperative budget [`polling_a_task`] may take before deciding
/// the budget is lifted: Tokio gives a task 128 per poll; the margin covers a larger one. Each
/// unit costs about 20 ns where no budget is in force (a blocking thread): about 5 µs a call.
const BUDGET_PROBE: usize = 256;

/// Whether this thread is polling a Tokio task (or `Runtime::block_on`'s future): whether a
/// cooperative budget is in force. Takes units of it until it runs out (then it is in force)
/// or the probe's allowance is used up (then it is lifted), and gives every unit back.
fn polling_a_task() -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    // Dropped at the end, the first unit's guard puts the budget back as it was before the
    // probe; the others are marked as progress, so that dropping them restores nothing and the
    // budget keeps going down.
    let Poll::Ready(first) = tokio::task::coop::poll_proceed(&mut cx) else {
        return true;
    };
    let limited = (1..BUDGET_PROBE).any(|_| match tokio::task::coop::poll_proceed(&mut cx) {
        Poll::Ready(unit) => {
            unit.made_progress();
            false
        }
        Poll::Pending => true,
    });
    drop(first);
    limited
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{block_on, polling_a_task};
    use crate::Error;

    /// A future that needs a runtime context: Tokio's timer and a spawned task.
    async fn needs_a_runtime() -> u32 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        tokio::spawn(async { 7 }).await.unwrap_or(0)
    }

    #[test]
    fn a_plain_thread_runs_on_the_process_runtime() {
        let got = std::thread::spawn(|| block_on(needs_a_runtime()))
            .join()
            .expect("no panic");
        assert_eq!(got.ok(), Some(7));
    }

    #[test]
    fn inside_a_task_or_block_on_is_an_error_not_a_panic() {
        for runtime in [
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build(),
        ] {
            let runtime = runtime.expect("runtime");
            // `Runtime::block_on`'s own future.
            let in_block_on = runtime.block_on(async { block_on(needs_a_runtime()) });
            assert!(matches!(in_block_on, Err(Error::AsyncContext)));
            // A spawned task.
            let in_task = runtime
                .block_on(runtime.spawn(async { block_on(needs_a_runtime()).is_err() }))
                .expect("no panic");
            assert!(in_task);
            // Outside the runtime no budget is in force.
            assert!(!polling_a_task());
        }
    }

    #[test]
    fn blocking_threads_of_either_runtime_work() {
        for runtime in [
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build(),
        ] {
            let runtime = runtime.expect("runtime");
            let got = runtime
                .block_on(runtime.spawn_blocking(|| block_on(needs_a_runtime())))
                .expect("no panic");
            assert_eq!(got.ok(), Some(7));
            // A thread under the runtime's `enter()` guard, nothing driving a current-thread
            // one: the process runtime's timer still fires (a bounded wait: on the idle
            // runtime's own timer, it would never).
            let (done, got) = std::sync::mpsc::channel();
            let handle = runtime.handle().clone();
            std::thread::spawn(move || {
                let _entered = handle.enter();
                let _ = done.send(block_on(needs_a_runtime()).ok());
            });
            assert_eq!(got.recv_timeout(Duration::from_secs(30)), Ok(Some(7)));
        }
    }

    #[test]
    fn block_in_place_works() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let got = runtime.block_on(async {
            tokio::spawn(async { tokio::task::block_in_place(|| block_on(needs_a_runtime())) })
                .await
        });
        assert_eq!(got.expect("no panic").ok(), Some(7));
    }

    #[test]
    fn the_probe_leaves_a_tasks_budget_as_it_was() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            assert!(polling_a_task());
            // Units kept would leave the budget spent (the probe takes all of it).
            assert!(tokio::task::coop::has_budget_remaining());
        });
    }
}
