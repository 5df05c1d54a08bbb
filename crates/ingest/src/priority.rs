//! CPU priority of ingest's threads, so serving reads can come first.
//!
//! On Linux the nice value is per thread and a new thread starts with its
//! creator's, so lowering the thread that runs ingest before it creates the
//! Kafka client and the fold threads lowers all of them, and nothing else.

/// Sets the calling thread's nice value to `nice` (0 leaves it alone). A
/// failure (for example a sandbox that forbids it) is logged, not fatal:
/// ingest is correct at any priority.
pub(crate) fn lower_this_thread(nice: i32) {
    if nice == 0 {
        return;
    }
    match set_nice(nice) {
        Ok(()) => tracing::debug!(nice, "ingest threads run at a lower CPU priority"),
        Err(e) => tracing::warn!(nice, error = %e, "could not lower ingest's CPU priority; it runs at the default"),
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: gettid and setpriority take plain integers and touch no
    // memory of ours; `which = PRIO_PROCESS` with a thread id sets that
    // one thread's nice value on Linux.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(not(target_os = "linux"))]
fn set_nice(_nice: i32) -> std::io::Result<()> {
    Err(std::io::Error::other("per-thread priority is set on Linux only"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    /// The calling thread's nice value, from /proc (the 19th field of its
    /// stat, counted after the command, which is in parentheses).
    fn nice_of_this_thread() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        after.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn lowers_only_the_calling_thread_and_the_threads_it_starts() {
        let this_before = nice_of_this_thread();
        let (lowered, child) = std::thread::spawn(|| {
            let target = (nice_of_this_thread() + 5).min(19);
            lower_this_thread(target);
            let child = std::thread::spawn(nice_of_this_thread).join().unwrap();
            (target, (nice_of_this_thread(), child))
        })
        .join()
        .unwrap();
        assert_eq!(child, (lowered, lowered), "the thread, and a thread it starts after");
        assert_eq!(nice_of_this_thread(), this_before, "other threads keep theirs");
    }
}
