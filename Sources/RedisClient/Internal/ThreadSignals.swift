import Glibc

/// Blocks SIGPIPE on the calling thread: a write to a socket or pipe whose other end
/// closed then fails with EPIPE instead of killing the process.
func blockSIGPIPEOnThisThread() {
    var blocked = sigset_t()
    sigemptyset(&blocked)
    sigaddset(&blocked, SIGPIPE)
    pthread_sigmask(SIG_BLOCK, &blocked, nil)
}
