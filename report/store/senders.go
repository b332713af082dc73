package store

import (
	"context"
	"fmt"
	"time"
)

// Sender is a network an Organizational Domain's DMARC-passing mail came
// from, and when last (package policy/senders).
type Sender struct {
	Org     string
	Network string // an IPv4 /24 or IPv6 /56, as netip.Prefix writes it
	Last    time.Time
}

// AddSenders records senders, keeping the latest Last of each (Org,
// Network), in one transaction.
func (s *Store) AddSenders(ctx context.Context, senders []Sender) (err error) {
	defer s.observe(&err)
	db, err := s.conn(ctx)
	if err != nil {
		return err
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	defer tx.Rollback()
	add, err := tx.PrepareContext(ctx, s.q(`INSERT INTO known_senders (org, net, last) VALUES (?, ?, ?)
		ON CONFLICT (org, net) DO UPDATE SET last = excluded.last WHERE known_senders.last < excluded.last`))
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	defer add.Close()
	for _, x := range senders {
		if _, err := add.ExecContext(ctx, x.Org, x.Network, unix(x.Last)); err != nil {
			return fmt.Errorf("store: add sender: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// Senders returns at most limit senders seen since since, the most
// recently seen first.
func (s *Store) Senders(ctx context.Context, since time.Time, limit int) (_ []Sender, err error) {
	defer s.observe(&err)
	db, err := s.conn(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx, s.q(`SELECT org, net, last FROM known_senders WHERE last >= ?
		ORDER BY last DESC LIMIT ?`), unix(since), limit)
	if err != nil {
		return nil, fmt.Errorf("store: senders: %w", err)
	}
	defer rows.Close()
	var out []Sender
	for rows.Next() {
		var x Sender
		var last int64
		if err := rows.Scan(&x.Org, &x.Network, &last); err != nil {
			return nil, fmt.Errorf("store: senders: %w", err)
		}
		x.Last = time.Unix(last, 0)
		out = append(out, x)
	}
	return out, rows.Err()
}

// ExpireSenders deletes the senders last seen before before and returns
// how many.
func (s *Store) ExpireSenders(ctx context.Context, before time.Time) (_ int64, err error) {
	defer s.observe(&err)
	db, err := s.conn(ctx)
	if err != nil {
		return 0, err
	}
	res, err := db.ExecContext(ctx, s.q(`DELETE FROM known_senders WHERE last < ?`), unix(before))
	if err != nil {
		return 0, fmt.Errorf("store: expire senders: %w", err)
	}
	return res.RowsAffected()
}
