package report

import (
	"context"
	"strings"
	"time"

	"github.com/dmarc-milter/dmarc-milter/report/store"
)

// limiter holds the de-duplication and rate limit state. The caller holds
// Reporter.mu.
type limiter struct {
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

// allow says whether a report for dest with dedup key key may be sent now,
// and why not.
func (l *limiter) allow(cfg *Config, key, dest string, now time.Time) Reason {
	if l.seen == nil {
		l.seen = map[string]time.Time{}
		l.dest = map[string][]time.Time{}
	}
	dest = strings.ToLower(dest)
	if cfg.DedupWindow > 0 {
		if t, ok := l.seen[key]; ok && now.Sub(t) < cfg.DedupWindow {
			return ReasonDuplicate
		}
	}
	if cfg.PerDestinationLimit > 0 && cfg.PerDestinationWindow > 0 {
		ts := windowCount(l.dest[dest], now, cfg.PerDestinationWindow)
		l.dest[dest] = ts
		if len(ts) >= cfg.PerDestinationLimit {
			return ReasonDestLimit
		}
	}
	if cfg.GlobalLimit > 0 && cfg.GlobalWindow > 0 {
		l.global = windowCount(l.global, now, cfg.GlobalWindow)
		if len(l.global) >= cfg.GlobalLimit {
			return ReasonGlobalLimit
		}
	}
	return ""
}

// take decides whether a report for dest with dedup key key may be sent
// now, and if so counts it: in the store when the Reporter has one (the
// fleet's limits), else in memory. A store that cannot be reached falls
// back to the limits in memory, logged.
func (r *Reporter) take(ctx context.Context, cfg *Config, key, dest string, now time.Time) Reason {
	if r.store != nil {
		why, err := r.store.Take(ctx, key, dest, now, store.Limits{
			Dedup:         cfg.DedupWindow,
			PerDest:       cfg.PerDestinationLimit,
			PerDestWindow: cfg.PerDestinationWindow,
			Global:        cfg.GlobalLimit,
			GlobalWindow:  cfg.GlobalWindow,
		})
		if err == nil {
			switch why {
			case store.LimitDuplicate:
				return ReasonDuplicate
			case store.LimitDestination:
				return ReasonDestLimit
			case store.LimitGlobal:
				return ReasonGlobalLimit
			}
			return ""
		}
		r.log.Error().Err(err).Msg("cannot apply the shared failure-report limits; using this host's")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	reason := r.limits.allow(cfg, key, dest, now)
	if reason == "" {
		r.limits.record(cfg, key, dest, now)
	}
	return reason
}

// record notes a report sent (spooled) now.
func (l *limiter) record(cfg *Config, key, dest string, now time.Time) {
	dest = strings.ToLower(dest)
	if cfg.DedupWindow > 0 {
		l.seen[key] = now
		// Forget old keys now and then, so memory stays bounded by the
		// number of distinct failures per window.
		if len(l.seen) > 1000 {
			for k, t := range l.seen {
				if now.Sub(t) >= cfg.DedupWindow {
					delete(l.seen, k)
				}
			}
		}
	}
	if cfg.PerDestinationLimit > 0 && cfg.PerDestinationWindow > 0 {
		l.dest[dest] = append(l.dest[dest], now)
		if len(l.dest) > 1000 {
			for d, ts := range l.dest {
				if len(windowCount(ts, now, cfg.PerDestinationWindow)) == 0 {
					delete(l.dest, d)
				}
			}
		}
	}
	if cfg.GlobalLimit > 0 && cfg.GlobalWindow > 0 {
		l.global = append(l.global, now)
	}
}
