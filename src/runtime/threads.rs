//! Running work on several threads, each with one libtorch intra-op thread: the
//! data-parallel workers of training and the per-core matmul measurement both do it,
//! and both need the caller's thread count back afterwards.

/// Runs every job at once, each on a thread of its own with one intra-op thread (that
/// thread's OpenMP and MKL setting), and returns their results in order. Setting it
/// also lowers the default that later threads start from, so the caller's count is
/// restored at the end.
pub fn one_thread_each<T: Send>(jobs: Vec<impl FnOnce() -> T + Send>) -> Vec<T> {
    let threads_before = tch::get_num_threads();
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                s.spawn(move || {
                    tch::set_num_threads(1);
                    job()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a worker thread panicked"))
            .collect()
    });
    tch::set_num_threads(threads_before);
    results
}
