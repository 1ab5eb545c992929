package main

import (
	"context"
	"strconv"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// cpuClock reads the CPU time spent so far by this process and by the Redis
// server. CPU time per message is steadier than messages per second on a
// shared machine: other tenants slow the clock on the wall, not the work.
type cpuClock struct {
	rdb *redis.Client
}

// now returns the CPU time (user + system) of this process and of the Redis
// server's main thread and children; ok is false when Redis did not say.
func (c cpuClock) now(ctx context.Context) (process, server time.Duration, ok bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		process = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	info, err := c.rdb.InfoMap(ctx, "cpu").Result()
	if err != nil {
		return process, 0, false
	}
	var total float64
	for _, k := range []string{"used_cpu_sys", "used_cpu_user"} {
		v, err := strconv.ParseFloat(info["CPU"][k], 64)
		if err != nil {
			return process, 0, false
		}
		total += v
	}
	return process, time.Duration(total * float64(time.Second)), true
}
