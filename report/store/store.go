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
	"sync"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	_ "modernc.org/sqlite"             // database/sql driver "sqlite"
)

// Store is a store. It is safe for concurrent use.
//
// The database is a dependency that comes and goes: a fleet host may boot
// before its PostgreSQL, which may fail over or freeze; a SQLite file may
// be deleted or its disk fill up. New never connects: each operation
// connects (and migrates the schema) if the store is not connected yet,
// and fails fast, with the last error, during the backoff after a failed
// attempt (1 s, doubling to 30 s), so that callers on a message's path
// never wait on a store known to be down. A SQLite file that disappears or
// is replaced while open is noticed at the next operation: it is reopened,
// created anew if needed, and that operation goes to the new file.
// Changes of state (down, back, file replaced) go to Options.Notify.
type Store struct {
	postgres bool
	// Where is the store, for logs: the SQLite file, or the PostgreSQL
	// host and database (no password).
	Where string

	dsn, path string // path: the SQLite file
	notify    func(Event)
	now       func() time.Time

	mu      sync.Mutex
	db      *sql.DB     // nil until connected and migrated
	file    os.FileInfo // SQLite: the file db has open
	lastErr error       // why the last attempt failed; nil while up
	since   time.Time   // when the store went down
	retryAt time.Time   // no new attempt before
	backoff time.Duration
}

// An Event is a change of the store's state.
type Event struct {
	Up bool // the store can be used again (false: it went down)
	// Err is why it went down; for a SQLite file that was replaced or
	// deleted, ErrFileReplaced (the store is up again on a new file).
	Err   error
	Since time.Time // Up: when it went down
}

// ErrFileReplaced says that the SQLite file was deleted or replaced while
// open; the store has reopened it.
var ErrFileReplaced = errors.New("store: the SQLite file was deleted or replaced while open; reopened")

// FileName is the SQLite store's file under the state directory.
const FileName = "dmarc-milter.db"

// Backoff between attempts to connect.
const (
	minBackoff = time.Second
	maxBackoff = 30 * time.Second
)

// Options are New's.
type Options struct {
	// Notify, if set, is told each change of state, synchronously with
	// the operation that found it.
	Notify func(Event)
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// Open opens the store dsn names ("" for SQLite in stateDir, a
// "postgres://" or "postgresql://" URL for PostgreSQL) and connects to
// it now, creating or migrating the schema: for the operator's commands,
// which want the error at once. The daemon uses New.
func Open(ctx context.Context, dsn, stateDir string) (*Store, error) {
	s, err := New(dsn, stateDir, Options{})
	if err != nil {
		return nil, err
	}
	if _, err := s.conn(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// New returns the store dsn names without connecting; its operations
// connect. The error is for a dsn that names no store.
func New(dsn, stateDir string, o Options) (*Store, error) {
	s := &Store{dsn: dsn, notify: o.Notify, now: o.Now}
	if s.now == nil {
		s.now = time.Now
	}
	switch {
	case dsn == "":
		s.path = filepath.Join(stateDir, FileName)
		s.Where = s.path
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		s.postgres = true
		s.Where = redactDSN(dsn)
	default:
		return nil, fmt.Errorf("store: %q is neither empty (SQLite) nor a postgres:// URL", redactDSN(dsn))
	}
	return s, nil
}

// Ping connects now if the store is not connected, and reports whether it
// answers.
func (s *Store) Ping(ctx context.Context) (err error) {
	defer s.observe(&err)
	db, err := s.conn(ctx)
	if err != nil {
		return err
	}
	return db.PingContext(ctx)
}

// Up reports whether the store was usable at its last operation.
func (s *Store) Up() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.db != nil && s.lastErr == nil
}

// conn returns the database, connecting first if needed. An operation
// that fails on an open database does not close it: database/sql
// reconnects by itself; down marks the store down for Up and Notify.
func (s *Store) conn(ctx context.Context) (*sql.DB, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db != nil && !s.postgres {
		s.checkFile()
	}
	if s.db != nil {
		return s.db, nil
	}
	now := s.now()
	if s.lastErr != nil && now.Before(s.retryAt) {
		return nil, s.lastErr
	}
	db, err := s.open(ctx)
	if err != nil {
		s.backoff = min(max(2*s.backoff, minBackoff), maxBackoff)
		s.retryAt = now.Add(s.backoff)
		s.fail(err, now)
		return nil, err
	}
	s.db, s.backoff = db, 0
	if s.lastErr != nil {
		s.lastErr = nil
		s.tell(Event{Up: true, Since: s.since})
	}
	return db, nil
}

// observe records the outcome of an operation on an open database: a
// failure marks the store down (Up false; Notify once), a success after
// one marks it up again.
func (s *Store) observe(err *error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case *err != nil && s.db != nil:
		s.fail(*err, s.now())
	case *err == nil && s.lastErr != nil && s.db != nil:
		s.lastErr = nil
		s.tell(Event{Up: true, Since: s.since})
	}
}

// fail marks the store down with err (once per outage for Notify).
func (s *Store) fail(err error, now time.Time) {
	if s.lastErr == nil {
		s.since = now
		s.lastErr = err
		s.tell(Event{Err: err})
		return
	}
	s.lastErr = err
}

func (s *Store) tell(e Event) {
	if s.notify != nil {
		s.notify(e)
	}
}

// checkFile reopens a SQLite file that is no longer the one open: deleted
// (its inode lives on, unreachable, until closed) or replaced.
func (s *Store) checkFile() {
	fi, err := os.Stat(s.path)
	if err == nil && os.SameFile(fi, s.file) {
		return
	}
	// Closing checkpoints into the old inode and removes the -wal and
	// -shm files by name; remove any left, which belong to no file now,
	// before a new file is made beside them.
	s.db.Close()
	s.db = nil
	if err != nil {
		os.Remove(s.path + "-wal")
		os.Remove(s.path + "-shm")
	}
	s.tell(Event{Err: ErrFileReplaced})
	s.lastErr = nil
}

// open connects and migrates.
func (s *Store) open(ctx context.Context) (*sql.DB, error) {
	var db *sql.DB
	var err error
	if s.postgres {
		db, err = sql.Open("pgx", s.dsn)
		if err == nil {
			db.SetMaxOpenConns(8)
		}
	} else {
		if err := os.MkdirAll(filepath.Dir(s.path), 0o750); err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
		// WAL lets readers (report building) run beside the writer; the
		// busy timeout covers a second process (report aggregate).
		db, err = sql.Open("sqlite", "file:"+s.path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)")
		if err == nil {
			// One connection: SQLite has one writer anyway, and this
			// keeps database/sql from meeting SQLITE_BUSY within the
			// process.
			db.SetMaxOpenConns(1)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", s.Where, err)
	}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %s: %w", s.Where, err)
	}
	if err := migrate(ctx, db, s); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %s: %w", s.Where, err)
	}
	if !s.postgres {
		if s.file, err = os.Stat(s.path); err != nil {
			db.Close()
			return nil, fmt.Errorf("store: %w", err)
		}
	}
	return db, nil
}

// Close closes the store.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db == nil {
		return nil
	}
	err := s.db.Close()
	s.db = nil
	return err
}

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
func migrate(ctx context.Context, db *sql.DB, s *Store) error {
	tx, err := db.BeginTx(ctx, nil)
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
