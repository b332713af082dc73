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

// LimiterWait bounds the time a message waits for the store's limits;
// LimiterRetry is how long, after the store failed to answer, messages use
// this host's limits without asking it.
const (
	LimiterWait  = 100 * time.Millisecond
	LimiterRetry = 5 * time.Second
)

// take asks the Reporter's limiter. A store that does not answer within
// LimiterWait, or failed within LimiterRetry, is not waited for: this
// host's limits apply (Stats.LimitFallbacks), and the outage is logged
// when it starts and when it ends, with the messages it affected.
func (r *Reporter) take(ctx context.Context, cfg *Config, key, dest string, now time.Time) Reason {
	if r.limiter == Limiter(r.local) {
		why, _ := r.local.Take(ctx, key, dest, now, cfg.limits())
		return Reason(why)
	}
	r.mu.Lock()
	skip := !r.limitDown.IsZero() && now.Before(r.limitRetry)
	r.mu.Unlock()
	var err error
	if !skip {
		lctx, cancel := context.WithTimeout(ctx, LimiterWait)
		var why string
		why, err = r.limiter.Take(lctx, key, dest, now, cfg.limits())
		cancel()
		if err == nil {
			r.mu.Lock()
			if !r.limitDown.IsZero() {
				r.log.Warn().Str("limits", r.limiterName).Time("since", r.limitDown).Uint64("messages", r.limitAffected).
					Msg("the store's failure-report limits are back")
				r.limitDown, r.limitAffected = time.Time{}, 0
			}
			r.mu.Unlock()
			return Reason(why)
		}
	}
	r.mu.Lock()
	r.stats.LimitFallbacks++
	r.limitAffected++
	if err != nil {
		r.limitRetry = now.Add(LimiterRetry)
	}
	if r.limitDown.IsZero() {
		r.limitDown = now
		r.log.Error().Err(err).Str("limits", r.limiterName).
			Msg("cannot apply the store's failure-report limits; using this host's until the store answers")
	}
	r.mu.Unlock()
	why, _ := r.local.Take(ctx, key, dest, now, cfg.limits())
	return Reason(why)
}
