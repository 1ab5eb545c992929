package accounts

import (
	"fmt"

	"gopkg.in/yaml.v3"
)

// Limits are an account's sending limits, enforced together by every worker
// sharing the same Redis (see tasks.AccountLimits): a task that would exceed
// one waits, without spending a retry, until the limit has room. A zero field
// means no limit.
//
// In the accounts file they are the "limits" block. A key left out takes the
// provider's preset; "unlimited" removes the preset's limit; 0 and negative
// numbers are refused (a limit of 0 would read as "send nothing"):
//
//	limits:
//	  max_sessions: 2            # preset microsoft: 3
//	  messages_per_minute: 30    # preset microsoft: 30
//	  messages_per_day: unlimited
//	  recipients_per_day: 5000   # preset google and microsoft: 10000
//
// Days and minutes are sliding windows: any 24 hours, any 60 seconds.
type Limits struct {
	// MaxSessions is how many SMTP sessions (connections) the account may
	// have open at once across all workers: with RegistryOptions.Sessions,
	// each connection holds a slot from its dial until it is closed, idle
	// pooled connections included. Preset: MicrosoftMaxSessions.
	MaxSessions int
	// MessagesPerMinute is how many messages the account may submit in
	// any minute. Preset: MicrosoftMessagesPerMinute.
	MessagesPerMinute int
	// MessagesPerDay is how many messages the account may submit in any
	// 24 hours. Preset: GoogleMessagesPerDay.
	MessagesPerDay int
	// RecipientsPerDay is how many envelope recipients the account may
	// submit to in any 24 hours (a message to 3 counts 3). Preset:
	// GoogleRecipientsPerDay and MicrosoftRecipientsPerDay.
	RecipientsPerDay int
}

// MaxConns returns how many connections one process's SMTP connection pool
// may keep for the account: perProcess, capped at MaxSessions when the
// account has one. Pooled idle connections are sessions at the provider, so a
// pool larger than MaxSessions would break the limit by itself.
func (l Limits) MaxConns(perProcess int) int {
	if l.MaxSessions > 0 && (perProcess <= 0 || perProcess > l.MaxSessions) {
		return l.MaxSessions
	}
	return perProcess
}

// Unlimited is the value that removes a preset's limit in the accounts file.
const Unlimited = "unlimited"

// rawLimits is the YAML form of the limits block. Nodes, so that "unlimited"
// and numbers both decode and every problem names its key.
type rawLimits struct {
	MaxSessions       yaml.Node `yaml:"max_sessions"`
	MessagesPerMinute yaml.Node `yaml:"messages_per_minute"`
	MessagesPerDay    yaml.Node `yaml:"messages_per_day"`
	RecipientsPerDay  yaml.Node `yaml:"recipients_per_day"`
}

// limits resolves the limits block over the provider's preset.
func (p *parser) limits(a *Account, ra *rawAccount, pre *preset) {
	rl := &ra.Limits
	a.Limits = pre.limits
	for _, f := range []struct {
		name string
		node *yaml.Node
		dst  *int
	}{
		{"max_sessions", &rl.MaxSessions, &a.Limits.MaxSessions},
		{"messages_per_minute", &rl.MessagesPerMinute, &a.Limits.MessagesPerMinute},
		{"messages_per_day", &rl.MessagesPerDay, &a.Limits.MessagesPerDay},
		{"recipients_per_day", &rl.RecipientsPerDay, &a.Limits.RecipientsPerDay},
	} {
		n, err := limitValue(f.node)
		if err != nil {
			p.failErr(a.label, "limits."+f.name, err)
			continue
		}
		if n >= 0 {
			*f.dst = n
		}
	}
}

// limitValue decodes one limit: -1 when the key is absent (keep the preset),
// 0 for "unlimited", or the positive number written.
func limitValue(n *yaml.Node) (int, error) {
	if n.Kind == 0 {
		return -1, nil
	}
	if n.Kind == yaml.ScalarNode {
		switch n.Tag {
		case "!!str":
			if n.Value == Unlimited {
				return 0, nil
			}
		case "!!int":
			var v int
			if err := n.Decode(&v); err == nil {
				if v > 0 {
					return v, nil
				}
				return 0, fmt.Errorf("%d is not a limit: want a positive whole number, or %s to remove the limit", v, Unlimited)
			}
		}
		return 0, fmt.Errorf("%q is not a limit: want a positive whole number or %s", n.Value, Unlimited)
	}
	return 0, fmt.Errorf("not a limit: want a positive whole number or %s", Unlimited)
}
