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
//! | drives async tasks of a multi-thread runtime                      | that runtime, after `block_in_place` hands the worker's tasks to another thread |
//! | drives async tasks of a current-thread runtime (inside a task, or in `Runtime::block_on`) | this thread, blocked, under the process-wide runtime's context |
//!
//! The **process-wide runtime** is a Tokio runtime with one worker (`matroska-blocking`),
//! started on first use, that only runs its timers, its I/O and the few tasks the cache spawns;
//! the future itself still runs on the calling thread. (Multi-thread, not current-thread: a
//! task spawned inside a blocking call lands there, and a blocking call it makes hands the
//! worker's core on instead of parking the thread that drives every blocking call's timers.)
//! In a blocking call parked on a current-thread runtime, the cache's fills do not join
//! another caller's in-process load (which may be a task of that runtime, unable to run until
//! the call returns): they load on their own. A current-thread
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
//! **Called from async code.** Sync code called straight from an async handler (a Diesel
//! repository under actix-web or axum) runs on a thread that drives tasks. Blocking that
//! thread is what such an app already does on every sync Diesel call, but Tokio's own
//! `Handle::block_on` panics there, and on a current-thread runtime waiting for that runtime's
//! own timers would deadlock. So [`block_on`] polls the future right there, parking the thread
//! between polls, under the process-wide runtime's context (its own thread drives the timers
//! and I/O) and with the task's cooperative budget lifted (noted once per process at
//! `debug`). A Redis backend made on that very current-thread runtime cannot answer meanwhile:
//! its calls end at the backend's time-out and the read goes to the database, as in any
//! backend failure. Tokio offers no call that says whether the thread
//! is driving tasks (tokio-rs/tokio#7769: `task::try_id` is also set on `spawn_blocking`
//! threads, and not set in `Runtime::block_on`), so [`block_on`] reads the one trace a task's
//! poll leaves that a blocking thread lacks: Tokio's cooperative budget, which is set while a
//! task (or `Runtime::block_on`'s future) is polled and lifted on blocking threads and in
//! `block_in_place`. It is read through the public [`tokio::task::coop::poll_proceed`] and left
//! as it was. Not seen: code inside [`tokio::task::unconstrained`], which lifts the budget too;
//! there Tokio's own panic remains.

use std::cell::Cell;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `future` to completion on the calling thread, in a Tokio runtime context, for the
/// blocking forms of async operations (see the [module docs](self) for which runtime).
///
/// ```
/// use matroska_core::{Cache, blocking};
///
/// // Plain sync code: no runtime anywhere.
/// let cache = Cache::memory();
/// blocking::block_on(cache.put("greeting", &"hello", &[], None))?;
/// let hit: Option<String> = blocking::block_on(cache.get("greeting"))?;
/// assert_eq!(hit.as_deref(), Some("hello"));
/// # Ok::<_, matroska_core::Error>(())
/// ```
///
/// From async code (the calling thread drives tasks) the calling thread itself waits for the
/// future, under the process-wide runtime's context (see the [module docs](self)).
pub fn block_on<F: Future>(future: F) -> F::Output {
    let Ok(current) = Handle::try_current() else {
        // No runtime on this thread: nothing is entered, so `Handle::block_on` cannot panic.
        return process_runtime().block_on(future);
    };
    // Nested in a call parked below: the budget is lifted there (`unconstrained`), and the
    // thread is still inside the caller's runtime, where `Handle::block_on` would panic.
    let nested = PARKING.with(Cell::get);
    if nested || polling_a_task() {
        // Nested in a parked call, the thread only looks like the process runtime's (its
        // context is entered), and `block_in_place` refuses a thread that is no worker.
        if !nested && current.runtime_flavor() == RuntimeFlavor::MultiThread {
            // A worker of a multi-thread runtime: hand its core (its queued tasks and its
            // unstealable next-task slot, where a task this future wakes lands, such as the
            // driver of a Redis connection made on this runtime) to another thread first;
            // parked with the core, the worker would keep them from running until the
            // backend's time-out. In there the budget is lifted: the arm below takes it.
            return tokio::task::block_in_place(|| block_on(future));
        }
        static NOTED: AtomicBool = AtomicBool::new(false);
        if !NOTED.swap(true, Ordering::Relaxed) {
            tracing::debug!(
                "a blocking cache call from async code blocks its thread until it is done; \
                 `.await` the async form where you can"
            );
        }
        // The process-wide runtime's timers and I/O, which its own thread drives; the task's
        // cooperative budget lifted, or a Tokio resource that found it spent would answer
        // `Pending` to every poll of this one, never-ending, task poll.
        let _entered = process_runtime().enter();
        return park_on(tokio::task::unconstrained(future));
    }
    match current.runtime_flavor() {
        // Its workers drive its timers and sockets whatever this thread does.
        RuntimeFlavor::MultiThread => current.block_on(future),
        // A current-thread runtime's timers and sockets advance only inside its
        // `Runtime::block_on`, which no thread may be in now.
        _ => process_runtime().block_on(future),
    }
}

/// Runs sync work that blocks (a database call, a wait on a channel) from wherever this thread
/// is: inside [`tokio::task::block_in_place`] on a multi-thread runtime, so a worker's other
/// tasks move to another thread meanwhile (a task `f` waits for, woken into the worker's own
/// next-task slot, could not run otherwise); directly elsewhere — no runtime, a current-thread
/// runtime, or inside a blocking call parked on this thread ([`parked`]), where
/// `block_in_place` panics.
pub fn run_blocking<R>(f: impl FnOnce() -> R) -> R {
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread && !parked() => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

thread_local! {
    /// Whether this thread is in [`park_on`] (a blocking call nested in its future parks too).
    static PARKING: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is parked in a blocking call made from async code on a current-thread
/// runtime: the tasks of that runtime cannot run until the call returns, so the call must not
/// wait for one of them (the cache's fills then do not join another caller's in-process load,
/// which may be such a task). Code run inside such a call sees the process-wide runtime as
/// the current one but is no worker of it: `tokio::task::block_in_place` panics there.
pub fn parked() -> bool {
    PARKING.with(Cell::get)
}

/// Polls `future` on this thread until it is ready, parking the thread in between.
fn park_on<F: Future>(future: F) -> F::Output {
    /// Wakes the parked thread. The flag, not the thread's single park token, says whether
    /// to poll again: a park inside the future's own poll (a nested call, a `std` channel's
    /// wait) may take the token a wake during that poll left, and the wake would be lost.
    struct Unpark {
        thread: std::thread::Thread,
        woken: AtomicBool,
    }
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.woken.store(true, Ordering::Release);
            self.thread.unpark();
        }
    }
    /// Restores [`PARKING`] as it was, a panic of the future included.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            PARKING.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(PARKING.with(|p| p.replace(true)));
    let unpark = Arc::new(Unpark {
        thread: std::thread::current(),
        woken: AtomicBool::new(false),
    });
    let waker = Waker::from(Arc::clone(&unpark));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        // A wake that came before this park (during the poll) left the flag: no park at all;
        // spurious unparks (another waker of this thread) park again.
        while !unpark.woken.swap(false, Ordering::Acquire) {
            std::thread::park();
        }
    }
}

/// The process-wide runtime's handle, started on first use: a one-worker multi-thread runtime,
/// so futures blocked on from any thread get its timers and I/O.
fn process_runtime() -> &'static Handle {
    static RUNTIME: OnceLock<Handle> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        // Without a runtime nothing of the cache can run; failing to build one means the
        // process cannot create a thread or an epoll instance: a panic, as `#[tokio::main]`.
        // Multi-thread with one worker, not current-thread: a task spawned inside a blocking
        // call lands here, and if it makes a blocking call of its own, `block_on` hands the
        // worker's core to another thread (`block_in_place`) instead of parking the one
        // thread that drives every timer of the process's blocking calls.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("matroska-blocking")
            .build()
            .expect("could not start matroska's runtime for blocking calls");
        let handle = runtime.handle().clone();
        // Kept for the life of the process (its worker drives timers and I/O by itself).
        std::mem::forget(runtime);
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
        assert_eq!(got, 7);
    }

    /// From async code — `Runtime::block_on`'s future, a spawned task — on either runtime
    /// kind: the calling thread blocks and runs it (not Tokio's panic, not a deadlock on a
    /// current-thread runtime's own timer).
    #[test]
    fn inside_a_task_or_block_on_blocks_its_thread_and_works() {
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
            assert_eq!(in_block_on, 7);
            // A spawned task.
            let in_task = runtime
                .block_on(runtime.spawn(async { block_on(needs_a_runtime()) }))
                .expect("no panic");
            assert_eq!(in_task, 7);
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
            assert_eq!(got, 7);
            // A thread under the runtime's `enter()` guard, nothing driving a current-thread
            // one: the process runtime's timer still fires (a bounded wait: on the idle
            // runtime's own timer, it would never).
            let (done, got) = std::sync::mpsc::channel();
            let handle = runtime.handle().clone();
            std::thread::spawn(move || {
                let _entered = handle.enter();
                let _ = done.send(Some(block_on(needs_a_runtime())));
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
        assert_eq!(got.expect("no panic"), 7);
    }

    /// A task of a current-thread runtime leads the load of a key and waits on that runtime
    /// (its timer here, a socket of an async database driver or of a Redis backend made there
    /// in an app); another task of the same runtime then calls a blocking form for the same
    /// key, from sync code. The blocking call joins the in-process flight and parks the only
    /// thread that could run the leader: it must not wait for it forever.
    #[test]
    fn a_blocking_follower_of_a_flight_led_on_its_own_thread_finishes() {
        let (done, got) = std::sync::mpsc::channel();
        // On a thread of its own: when the call deadlocks, that thread stays parked and the
        // test fails at the bounded wait below instead of hanging.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let cache = crate::Cache::memory();
            let got = runtime.block_on(async {
                let leader = tokio::spawn({
                    let cache = cache.clone();
                    async move {
                        cache
                            .get_or_load("k", None, || async {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                Ok::<_, std::io::Error>((1_u32, Vec::new()))
                            })
                            .await
                    }
                });
                // The leader runs until its loader waits on the timer.
                tokio::task::yield_now().await;
                let follower = block_on(cache.get_or_load("k", None, || async {
                    Ok::<_, std::io::Error>((2_u32, Vec::new()))
                }));
                (follower.ok(), leader.await.ok().and_then(Result::ok))
            });
            let _ = done.send(got);
        });
        let got = got.recv_timeout(Duration::from_secs(20));
        assert!(
            matches!(got, Ok((Some(_), Some(1)))),
            "the blocking follower did not finish: {got:?}"
        );
    }

    /// A blocking call inside the future of another (a blocking fill whose loader calls sync
    /// code that reads through the cache too), from plain code and from async code of
    /// either runtime kind.
    #[test]
    fn nested_block_on_works() {
        let nested = || block_on(async { block_on(needs_a_runtime()) + 1 });
        let (done, got) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let plain = std::panic::catch_unwind(nested).ok();
            let mut in_tasks = Vec::new();
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
                in_tasks.push(
                    runtime
                        .block_on(runtime.spawn(async move { nested() }))
                        .ok(),
                );
            }
            let _ = done.send((plain, in_tasks));
        });
        let got = got.recv_timeout(Duration::from_secs(30));
        assert_eq!(got, Ok((Some(8), vec![Some(8), Some(8)])));
    }

    /// A wake of the outer future that comes while a nested blocking call parks the thread
    /// (its park takes the thread's one park token) still gets the outer future polled.
    #[test]
    fn a_wake_during_a_nested_call_is_not_lost() {
        struct WokenDuringNested(bool);
        impl std::future::Future for WokenDuringNested {
            type Output = u32;
            fn poll(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<u32> {
                if self.0 {
                    return std::task::Poll::Ready(1);
                }
                self.0 = true;
                // Woken from another thread, then the nested call's own wait answered: the
                // outer wake's unpark lands while the nested call parks.
                let (answer, answered) = tokio::sync::oneshot::channel();
                let waker = cx.waker().clone();
                std::thread::spawn(move || {
                    waker.wake();
                    let _ = answer.send(());
                });
                let _ = block_on(answered);
                std::task::Poll::Pending
            }
        }
        let (done, got) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let _ = done.send(runtime.block_on(async { block_on(WokenDuringNested(false)) }));
        });
        assert_eq!(got.recv_timeout(Duration::from_secs(20)), Ok(1));
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
