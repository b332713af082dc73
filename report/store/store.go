// Package store keeps what reports need across messages, restarts and MX
// hosts: the rows of DMARC aggregate reports (RFC 9990), the claims that
// let exactly one host of a fleet send each report, and the failure-report
// limits and de-duplication (RFC 9991) when they are shared.
//
// One schema and one set of queries serve two engines through
// database/sql: SQLite (modernc.org/sqlite, pure Go, so the packages stay
// static) in a file under the state directory for one host, and PostgreSQL
// (pgx) for a fleet whose MX hosts all write into the same database. The
// queries are written once with "?" placeholders and rewritten to "$n" for
// PostgreSQL; upserts use INSERT ... ON CONFLICT, which both engines have.
// The schema is versioned (migrations below); a store written by an older
// version is migrated when it is opened.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	_ "modernc.org/sqlite"             // database/sql driver "sqlite"
)

// Store is an open store. It is safe for concurrent use.
type Store struct {
	db       *sql.DB
	postgres bool
	// Where is the store, for logs: the SQLite file, or the PostgreSQL
	// host and database (no password).
	Where string
}

// FileName is the SQLite store's file under the state directory.
const FileName = "dmarc-milter.db"

// Open opens the store dsn names: "" for SQLite in stateDir, a
// "postgres://" or "postgresql://" URL for PostgreSQL. It creates or
// migrates the schema.
func Open(ctx context.Context, dsn, stateDir string) (*Store, error) {
	s := &Store{}
	var err error
	switch {
	case dsn == "":
		if err := os.MkdirAll(stateDir, 0o750); err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
		path := filepath.Join(stateDir, FileName)
		s.Where = path
		// WAL lets readers (report building) run beside the writer; the
		// busy timeout covers a second process (report aggregate).
		s.db, err = sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)")
		if err == nil {
			// One connection: SQLite has one writer anyway, and this
			// keeps database/sql from meeting SQLITE_BUSY within the
			// process.
			s.db.SetMaxOpenConns(1)
		}
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		s.postgres = true
		s.Where = redactDSN(dsn)
		s.db, err = sql.Open("pgx", dsn)
		if err == nil {
			s.db.SetMaxOpenConns(8)
		}
	default:
		return nil, fmt.Errorf("store: %q is neither empty (SQLite) nor a postgres:// URL", redactDSN(dsn))
	}
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", s.Where, err)
	}
	if err := s.db.PingContext(ctx); err != nil {
		s.db.Close()
		return nil, fmt.Errorf("store: %s: %w", s.Where, err)
	}
	if err := s.migrate(ctx); err != nil {
		s.db.Close()
		return nil, fmt.Errorf("store: %s: %w", s.Where, err)
	}
	return s, nil
}

// Close closes the store.
func (s *Store) Close() error { return s.db.Close() }

// Postgres reports whether the store is PostgreSQL (shared by a fleet).
func (s *Store) Postgres() bool { return s.postgres }

// redactDSN drops the password of a URL, for messages.
func redactDSN(dsn string) string {
	at := strings.LastIndexByte(dsn, '@')
	scheme := strings.Index(dsn, "://")
	if at < 0 || scheme < 0 || at < scheme {
		return dsn
	}
	userinfo := dsn[scheme+3 : at]
	if user, _, ok := strings.Cut(userinfo, ":"); ok {
		return dsn[:scheme+3] + user + ":***" + dsn[at:]
	}
	return dsn
}

// q rewrites "?" placeholders for PostgreSQL ("$1", "$2", ...).
func (s *Store) q(query string) string {
	if !s.postgres {
		return query
	}
	var b strings.Builder
	n := 0
	for i := 0; i < len(query); i++ {
		if query[i] == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteByte(query[i])
	}
	return b.String()
}

// migrations are the schema versions, in order; migrations[i] takes the
// schema from version i to i+1. Never edit one that has shipped: add one.
// "{{clustered}}" marks a table stored in its primary key's order: SQLite's
// WITHOUT ROWID, which keeps the key once instead of in the table and an
// index (PostgreSQL has no such clause and needs none here).
var migrations = []string{
	// 1: aggregate rows, published policies, report claims, failure-report
	// events.
	`CREATE TABLE agg_rows (
		period  BIGINT NOT NULL,
		domain  TEXT   NOT NULL,
		fp      TEXT   NOT NULL,
		data    TEXT   NOT NULL,
		count   BIGINT NOT NULL,
		PRIMARY KEY (period, domain, fp)
	) {{clustered}};
	CREATE TABLE agg_policies (
		period  BIGINT NOT NULL,
		domain  TEXT   NOT NULL,
		data    TEXT   NOT NULL,
		seen    BIGINT NOT NULL,
		PRIMARY KEY (period, domain)
	) {{clustered}};
	CREATE TABLE agg_reports (
		period      BIGINT NOT NULL,
		domain      TEXT   NOT NULL,
		state       TEXT   NOT NULL,
		owner       TEXT   NOT NULL,
		lease_until BIGINT NOT NULL,
		report_id   TEXT   NOT NULL DEFAULT '',
		done_at     BIGINT NOT NULL DEFAULT 0,
		PRIMARY KEY (period, domain)
	);
	CREATE TABLE fr_events (
		at      BIGINT NOT NULL,
		dedup   TEXT   NOT NULL,
		dest    TEXT   NOT NULL
	);
	CREATE INDEX fr_events_at ON fr_events (at);
	CREATE INDEX fr_events_dedup ON fr_events (dedup);
	CREATE INDEX fr_events_dest ON fr_events (dest)`,
	// 2: the networks each Organizational Domain's DMARC-passing mail came
	// from (policy/senders).
	`CREATE TABLE known_senders (
		org   TEXT   NOT NULL,
		net   TEXT   NOT NULL,
		last  BIGINT NOT NULL,
		PRIMARY KEY (org, net)
	) {{clustered}};
	CREATE INDEX known_senders_last ON known_senders (last)`,
}

// SchemaVersion is the schema version this build writes.
var SchemaVersion = len(migrations)

// migrate brings the schema to SchemaVersion. With PostgreSQL an advisory
// lock keeps two hosts starting together from migrating at once.
func (s *Store) migrate(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if s.postgres {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(7489001)`); err != nil {
			return fmt.Errorf("migration lock: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("schema_version: %w", err)
	}
	version := 0
	err = tx.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&version)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version (version) VALUES (0)`); err != nil {
			return err
		}
	case err != nil:
		return err
	}
	if version > len(migrations) {
		return fmt.Errorf("the store has schema version %d, newer than this dmarc-milter's %d", version, len(migrations))
	}
	for v := version; v < len(migrations); v++ {
		clustered := ""
		if !s.postgres {
			clustered = "WITHOUT ROWID"
		}
		for _, stmt := range strings.Split(strings.ReplaceAll(migrations[v], "{{clustered}}", clustered), ";") {
			if strings.TrimSpace(stmt) == "" {
				continue
			}
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("migration %d: %w", v+1, err)
			}
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE schema_version SET version = ?`), v+1); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// unix is t in seconds since the epoch.
func unix(t time.Time) int64 { return t.Unix() }
