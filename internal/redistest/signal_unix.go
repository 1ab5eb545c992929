package redistest

import "syscall"

// interrupt is the signal that stops redis-server cleanly.
var interrupt = syscall.SIGTERM
