package accounts

import "time"

// WithClock returns o with the clock of the shared token sources set to
// now, for tests that move time instead of sleeping.
func WithClock(o RegistryOptions, now func() time.Time) RegistryOptions {
	o.nowFunc = now
	return o
}
