package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// Key names one aggregate report: the rows of one policy domain in one
// period (Period is the period's start, in seconds since the epoch).
type Key struct {
	Period int64
	Domain string
}

func (k Key) String() string { return fmt.Sprintf("%s@%d", k.Domain, k.Period) }

// Row is one aggregated row: Data is what package aggregate made of a
// message (opaque here), FP its fingerprint, Count the messages.
type Row struct {
	Key
	FP    string
	Data  string
	Count int64
}

// Policy is the DMARC policy seen for a key (opaque Data), and when.
type Policy struct {
	Key
	Data string
	Seen time.Time
}

// Add adds rows (their counts summed into the rows already stored with the
// same key and fingerprint) and records the policies seen, in one
// transaction: rows are aggregated as they are written, so a report reads
// one row per distinct tuple however many messages and hosts made it.
func (s *Store) Add(ctx context.Context, rows []Row, policies []Policy) (err error) {
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
	addRow, err := tx.PrepareContext(ctx, s.q(`INSERT INTO agg_rows (period, domain, fp, data, count) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (period, domain, fp) DO UPDATE SET count = agg_rows.count + excluded.count`))
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	defer addRow.Close()
	for _, r := range rows {
		if _, err := addRow.ExecContext(ctx, r.Period, r.Domain, r.FP, r.Data, r.Count); err != nil {
			return fmt.Errorf("store: add row: %w", err)
		}
	}
	addPolicy, err := tx.PrepareContext(ctx, s.q(`INSERT INTO agg_policies (period, domain, data, seen) VALUES (?, ?, ?, ?)
		ON CONFLICT (period, domain) DO UPDATE SET data = excluded.data, seen = excluded.seen
		WHERE agg_policies.seen <= excluded.seen`))
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	defer addPolicy.Close()
	for _, p := range policies {
		if _, err := addPolicy.ExecContext(ctx, p.Period, p.Domain, p.Data, unix(p.Seen)); err != nil {
			return fmt.Errorf("store: add policy: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// Due returns the reports of periods that ended by now (their start plus
// interval) that are not done and not claimed under a live lease.
func (s *Store) Due(ctx context.Context, interval time.Duration, now time.Time) (_ []Key, err error) {
	defer s.observe(&err)
	db, err := s.conn(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx, s.q(`SELECT DISTINCT r.period, r.domain FROM agg_rows r
		WHERE r.period + ? <= ?
		AND NOT EXISTS (SELECT 1 FROM agg_reports a WHERE a.period = r.period AND a.domain = r.domain
			AND (a.state = 'done' OR a.lease_until > ?))
		ORDER BY r.period, r.domain`), int64(interval/time.Second), unix(now), unix(now))
	if err != nil {
		return nil, fmt.Errorf("store: due reports: %w", err)
	}
	return scanKeys(rows)
}

// Keys returns the reports with rows whose period starts in [from, until),
// of domain only if it is not empty.
func (s *Store) Keys(ctx context.Context, from, until time.Time, domain string) (_ []Key, err error) {
	defer s.observe(&err)
	db, err := s.conn(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx, s.q(`SELECT DISTINCT period, domain FROM agg_rows
		WHERE period >= ? AND period < ? AND (? = '' OR domain = ?) ORDER BY period, domain`),
		unix(from), unix(until), domain, domain)
	if err != nil {
		return nil, fmt.Errorf("store: reports: %w", err)
	}
	return scanKeys(rows)
}

func scanKeys(rows *sql.Rows) ([]Key, error) {
	defer rows.Close()
	var keys []Key
	for rows.Next() {
		var k Key
		if err := rows.Scan(&k.Period, &k.Domain); err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
		keys = append(keys, k)
	}
	return keys, rows.Err()
}

// Claim makes owner the one host that builds and sends report k, for
// lease: it succeeds when nobody claimed k yet, or when the last claim's
// lease ran out before the report was done (its host died). A report
// already done is never claimed again.
func (s *Store) Claim(ctx context.Context, k Key, owner string, now time.Time, lease time.Duration) (_ bool, err error) {
	defer s.observe(&err)
	db, err := s.conn(ctx)
	if err != nil {
		return false, err
	}
	res, err := db.ExecContext(ctx, s.q(`INSERT INTO agg_reports (period, domain, state, owner, lease_until) VALUES (?, ?, 'claimed', ?, ?)
		ON CONFLICT (period, domain) DO UPDATE SET owner = excluded.owner, lease_until = excluded.lease_until
		WHERE agg_reports.state = 'claimed' AND (agg_reports.lease_until <= ? OR agg_reports.owner = excluded.owner)`),
		k.Period, k.Domain, owner, unix(now.Add(lease)), unix(now))
	if err != nil {
		return false, fmt.Errorf("store: claim %s: %w", k, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("store: claim %s: %w", k, err)
	}
	return n > 0, nil
}

// Done marks report k done by owner (its messages are in owner's spool,
// or there was nothing to send): no host claims it again. It returns false,
// changing nothing, when owner no longer holds the claim (its lease ran out
// and another host took it): owner must then drop what it spooled.
func (s *Store) Done(ctx context.Context, k Key, owner, reportID string, now time.Time) (_ bool, err error) {
	defer s.observe(&err)
	db, err := s.conn(ctx)
	if err != nil {
		return false, err
	}
	res, err := db.ExecContext(ctx, s.q(`UPDATE agg_reports SET state = 'done', report_id = ?,
		done_at = CASE WHEN done_at = 0 THEN ? ELSE done_at END
		WHERE period = ? AND domain = ? AND owner = ?`), reportID, unix(now), k.Period, k.Domain, owner)
	if err != nil {
		return false, fmt.Errorf("store: done %s: %w", k, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("store: done %s: %w", k, err)
	}
	return n > 0, nil
}

// Rows returns the rows of report k, the largest counts first.
func (s *Store) Rows(ctx context.Context, k Key) (_ []Row, err error) {
	defer s.observe(&err)
	db, err := s.conn(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx, s.q(`SELECT fp, data, count FROM agg_rows WHERE period = ? AND domain = ?
		ORDER BY count DESC, fp`), k.Period, k.Domain)
	if err != nil {
		return nil, fmt.Errorf("store: rows of %s: %w", k, err)
	}
	defer rows.Close()
	var out []Row
	for rows.Next() {
		r := Row{Key: k}
		if err := rows.Scan(&r.FP, &r.Data, &r.Count); err != nil {
			return nil, fmt.Errorf("store: rows of %s: %w", k, err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// PolicyOf returns the last policy seen for report k ("" if none).
func (s *Store) PolicyOf(ctx context.Context, k Key) (_ string, err error) {
	var data string
	defer s.observe(&err)
	db, err := s.conn(ctx)
	if err != nil {
		return "", err
	}
	err = db.QueryRowContext(ctx, s.q(`SELECT data FROM agg_policies WHERE period = ? AND domain = ?`), k.Period, k.Domain).Scan(&data)
	if err == sql.ErrNoRows {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("store: policy of %s: %w", k, err)
	}
	return data, nil
}

// Expire deletes the rows, policies and claims of reports done before
// before. It returns how many reports it removed.
func (s *Store) Expire(ctx context.Context, before time.Time) (_ int64, err error) {
	defer s.observe(&err)
	db, err := s.conn(ctx)
	if err != nil {
		return 0, err
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("store: %w", err)
	}
	defer tx.Rollback()
	for _, table := range []string{"agg_rows", "agg_policies"} {
		if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM `+table+` WHERE EXISTS (SELECT 1 FROM agg_reports a
			WHERE a.period = `+table+`.period AND a.domain = `+table+`.domain AND a.state = 'done' AND a.done_at < ?)`), unix(before)); err != nil {
			return 0, fmt.Errorf("store: expire %s: %w", table, err)
		}
	}
	res, err := tx.ExecContext(ctx, s.q(`DELETE FROM agg_reports WHERE state = 'done' AND done_at < ?`), unix(before))
	if err != nil {
		return 0, fmt.Errorf("store: expire reports: %w", err)
	}
	n, _ := res.RowsAffected()
	return n, tx.Commit()
}
