package report

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/dmarc-milter/dmarc-milter/report/store"
)

// A Limiter applies the failure-report limits (RFC 9991 Section 7 leaves
// them to the receiver): Take decides whether a report with
// de-duplication key key for dest may be sent now and, if so, counts it.
// It returns "" for yes, otherwise one of the reasons store.LimitDuplicate,
// store.LimitDestination and store.LimitGlobal (ReasonDuplicate,
// ReasonDestLimit, ReasonGlobalLimit). Two implement it: MemoryLimiter,
// this host's, and *store.Store, the fleet's (with PostgreSQL).
type Limiter interface {
	Take(ctx context.Context, key, dest string, now time.Time, l store.Limits) (string, error)
}

// MemoryLimiter is the Limiter of one host, in memory. It never fails.
type MemoryLimiter struct {
	mu     sync.Mutex
	seen   map[string]time.Time   // dedup key -> when last sent
	dest   map[string][]time.Time // destination -> send times in the window
	global []time.Time
}

// windowCount drops the times older than window from ts and returns the
// rest.
func windowCount(ts []time.Time, now time.Time, window time.Duration) []time.Time {
	i := 0
	for i < len(ts) && !ts[i].After(now.Add(-window)) {
		i++
	}
	return ts[i:]
}

// Take implements Limiter.
func (m *MemoryLimiter) Take(_ context.Context, key, dest string, now time.Time, l store.Limits) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.seen == nil {
		m.seen = map[string]time.Time{}
		m.dest = map[string][]time.Time{}
	}
	dest = strings.ToLower(dest)
	if l.Dedup > 0 {
		if t, ok := m.seen[key]; ok && now.Sub(t) < l.Dedup {
			return store.LimitDuplicate, nil
		}
	}
	if l.PerDest > 0 && l.PerDestWindow > 0 {
		ts := windowCount(m.dest[dest], now, l.PerDestWindow)
		m.dest[dest] = ts
		if len(ts) >= l.PerDest {
			return store.LimitDestination, nil
		}
	}
	if l.Global > 0 && l.GlobalWindow > 0 {
		m.global = windowCount(m.global, now, l.GlobalWindow)
		if len(m.global) >= l.Global {
			return store.LimitGlobal, nil
		}
	}
	m.record(key, dest, now, l)
	return "", nil
}

// record notes a report sent (spooled) now.
func (m *MemoryLimiter) record(key, dest string, now time.Time, l store.Limits) {
	if l.Dedup > 0 {
		m.seen[key] = now
		// Forget old keys now and then, so memory stays bounded by the
		// number of distinct failures per window.
		if len(m.seen) > 1000 {
			for k, t := range m.seen {
				if now.Sub(t) >= l.Dedup {
					delete(m.seen, k)
				}
			}
		}
	}
	if l.PerDest > 0 && l.PerDestWindow > 0 {
		m.dest[dest] = append(m.dest[dest], now)
		if len(m.dest) > 1000 {
			for d, ts := range m.dest {
				if len(windowCount(ts, now, l.PerDestWindow)) == 0 {
					delete(m.dest, d)
				}
			}
		}
	}
	if l.Global > 0 && l.GlobalWindow > 0 {
		m.global = append(m.global, now)
	}
}

// limits are cfg's limits in the Limiter's terms.
func (c *Config) limits() store.Limits {
	return store.Limits{
		Dedup:         c.DedupWindow,
		PerDest:       c.PerDestinationLimit,
		PerDestWindow: c.PerDestinationWindow,
		Global:        c.GlobalLimit,
		GlobalWindow:  c.GlobalWindow,
	}
}

// take asks the Reporter's limiter. A shared limiter that cannot be
// reached falls back to this host's, logged.
func (r *Reporter) take(ctx context.Context, cfg *Config, key, dest string, now time.Time) Reason {
	why, err := r.limiter.Take(ctx, key, dest, now, cfg.limits())
	if err != nil {
		r.log.Error().Err(err).Msg("cannot apply the shared failure-report limits; using this host's")
		why, _ = r.local.Take(ctx, key, dest, now, cfg.limits())
	}
	return Reason(why)
}
