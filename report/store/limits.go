package store

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Limits are the failure-report limits (RFC 9991 Section 7 leaves them to
// the receiver): identical failures once per Dedup, at most PerDest reports
// per destination per PerDestWindow and Global in all per GlobalWindow. A
// zero count or window turns that limit off.
type Limits struct {
	Dedup         time.Duration
	PerDest       int
	PerDestWindow time.Duration
	Global        int
	GlobalWindow  time.Duration
}

// Reasons Take gives for a report it refuses: the failure reporter's
// reasons (report.ReasonDuplicate, ReasonDestLimit, ReasonGlobalLimit) and
// the labels of its metrics, one set for both limiters.
const (
	LimitDuplicate   = "duplicate"
	LimitDestination = "destination-rate-limit"
	LimitGlobal      = "global-rate-limit"
)

// Take decides, for the whole fleet that shares the store, whether a
// failure report with de-duplication key dedup for dest may be sent now,
// and records it if so: "" means yes, otherwise one of the Limit reasons.
// Decision and record are one transaction (with PostgreSQL under an
// advisory lock, so two hosts cannot both take the last slot).
func (s *Store) Take(ctx context.Context, dedup, dest string, now time.Time, l Limits) (_ string, err error) {
	dest = strings.ToLower(dest)
	defer s.observe(&err)
	db, err := s.conn(ctx)
	if err != nil {
		return "", err
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return "", fmt.Errorf("store: %w", err)
	}
	defer tx.Rollback()
	if s.postgres {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(7489002)`); err != nil {
			return "", fmt.Errorf("store: limits lock: %w", err)
		}
	}
	longest := max(l.Dedup, l.PerDestWindow, l.GlobalWindow)
	if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM fr_events WHERE at <= ?`), now.Add(-longest).UnixNano()); err != nil {
		return "", fmt.Errorf("store: limits: %w", err)
	}
	count := func(where string, window time.Duration, arg string) (int, error) {
		var n int
		args := []any{now.Add(-window).UnixNano()}
		if arg != "" {
			args = append(args, arg)
		}
		err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM fr_events WHERE at > ?`+where), args...).Scan(&n)
		return n, err
	}
	for _, c := range []struct {
		on     bool
		where  string
		window time.Duration
		arg    string
		max    int
		reason string
	}{
		{l.Dedup > 0, ` AND dedup = ?`, l.Dedup, dedup, 1, LimitDuplicate},
		{l.PerDest > 0 && l.PerDestWindow > 0, ` AND dest = ?`, l.PerDestWindow, dest, l.PerDest, LimitDestination},
		{l.Global > 0 && l.GlobalWindow > 0, ``, l.GlobalWindow, "", l.Global, LimitGlobal},
	} {
		if !c.on {
			continue
		}
		n, err := count(c.where, c.window, c.arg)
		if err != nil {
			return "", fmt.Errorf("store: limits: %w", err)
		}
		if n >= c.max {
			return c.reason, nil
		}
	}
	if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO fr_events (at, dedup, dest) VALUES (?, ?, ?)`), now.UnixNano(), dedup, dest); err != nil {
		return "", fmt.Errorf("store: limits: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return "", fmt.Errorf("store: limits: %w", err)
	}
	return "", nil
}
