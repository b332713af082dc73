package aggregate

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/report/store"
)

// Recorder counts judged messages into the store (a session.Consumer).
// Submit only adds to a table in memory, under a lock: it never waits on
// the store. Run writes the table to the store every FlushInterval in one
// transaction (rows summed at write time, so the store holds one row per
// distinct tuple), and once more when it stops: SIGTERM loses nothing,
// kill -9 at most FlushInterval of counts. If the store cannot be written
// the counts stay in memory and are written later, up to MaxPending rows;
// beyond, new rows are dropped and counted (Stats.Dropped), logged. What
// cannot be written at shutdown is counted as dropped too, and the log
// line says how many messages. An outage is logged when it starts and when
// it ends, never once per flush.
type Recorder struct {
	st  *store.Store
	log zerolog.Logger
	now func() time.Time

	// Interval is the report period; FlushInterval the longest time counts
	// stay in memory only.
	Interval, FlushInterval time.Duration
	Facts                   Facts
	// MaxPending bounds the distinct rows kept in memory.
	MaxPending int

	mu       sync.Mutex
	rows     map[rowKey]*store.Row
	policies map[store.Key]store.Policy
	kick     chan struct{}

	recorded, dropped, flushErrors atomic.Uint64

	// downSince is when the store stopped taking writes; zero while it
	// takes them. Run's own.
	downSince time.Time
}

type rowKey struct {
	k    store.Key
	data string
}

// NewRecorder returns a Recorder writing to st. now is the clock (nil:
// time.Now).
func NewRecorder(st *store.Store, interval, flush time.Duration, f Facts, log zerolog.Logger, now func() time.Time) *Recorder {
	if now == nil {
		now = time.Now
	}
	return &Recorder{
		st: st, log: log.With().Str("component", "aggregate-report").Logger(), now: now,
		Interval: interval, FlushInterval: flush, Facts: f, MaxPending: 1_000_000,
		rows: map[rowKey]*store.Row{}, policies: map[store.Key]store.Policy{}, kick: make(chan struct{}, 1),
	}
}

// RecorderStats are the Recorder's counters.
type RecorderStats struct {
	Recorded, Dropped, FlushErrors uint64
}

// Stats returns the counters.
func (r *Recorder) Stats() RecorderStats {
	return RecorderStats{Recorded: r.recorded.Load(), Dropped: r.dropped.Load(), FlushErrors: r.flushErrors.Load()}
}

// Submit counts one judged message (session.Consumer).
func (r *Recorder) Submit(j *policy.Judged) {
	row, pub, ok := RowOf(j, r.Facts)
	if !ok {
		return
	}
	at := j.Arrival
	if at.IsZero() {
		at = r.now()
	}
	k := store.Key{Period: Period(at, r.Interval), Domain: pub.Domain}
	sr := storeRow(k, row)
	pdata := marshalPublished(pub)
	r.mu.Lock()
	if e, ok := r.rows[rowKey{k, sr.Data}]; ok {
		e.Count++
	} else if len(r.rows) >= r.MaxPending {
		r.mu.Unlock()
		if r.dropped.Add(1)%10000 == 1 {
			r.log.Error().Int("max_pending", r.MaxPending).Uint64("dropped", r.dropped.Load()).
				Msg("aggregate report rows cannot be written to the store fast enough; rows dropped")
		}
		return
	} else {
		r.rows[rowKey{k, sr.Data}] = &sr
	}
	r.policies[k] = store.Policy{Key: k, Data: pdata, Seen: at}
	full := len(r.rows) >= r.MaxPending/2
	r.mu.Unlock()
	r.recorded.Add(1)
	if full {
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
}

// Run writes the counts to the store every FlushInterval until ctx ends,
// then once more.
func (r *Recorder) Run(ctx context.Context) {
	t := time.NewTicker(r.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			// The last write must not be cut by the ended context.
			fctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if err := r.Flush(fctx); err != nil {
				msgs, rows := r.pending()
				r.dropped.Add(msgs)
				r.log.Error().Err(err).Str("store", r.st.Where).Uint64("messages", msgs).Int("rows", rows).
					Msg("aggregate report rows not written at shutdown: these messages are missing from the reports")
			}
			cancel()
			return
		case <-t.C:
		case <-r.kick:
		}
		r.flushed(ctx, r.Flush(ctx))
	}
}

// flushed logs the store's state changes: down at the first failed flush,
// back at the first flush that works after.
func (r *Recorder) flushed(ctx context.Context, err error) {
	switch {
	case err != nil && ctx.Err() == nil:
		r.flushErrors.Add(1)
		if r.downSince.IsZero() {
			r.downSince = r.now()
			msgs, _ := r.pending()
			r.log.Error().Err(err).Str("store", r.st.Where).Uint64("messages", msgs).
				Msg("aggregate report store unavailable: rows kept in memory and retried each flush")
		}
	case err == nil && !r.downSince.IsZero():
		r.log.Warn().Str("store", r.st.Where).Time("since", r.downSince).
			Str("outage", r.now().Sub(r.downSince).Round(time.Second).String()).
			Msg("aggregate report store back: the rows kept meanwhile are written")
		r.downSince = time.Time{}
	}
}

// pending returns the messages and distinct rows in memory.
func (r *Recorder) pending() (messages uint64, rows int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, row := range r.rows {
		messages += uint64(row.Count)
	}
	return messages, len(r.rows)
}

// Flush writes what is in memory to the store now. On error the counts
// are kept for the next flush.
func (r *Recorder) Flush(ctx context.Context) error {
	r.mu.Lock()
	rows, policies := r.rows, r.policies
	r.rows, r.policies = map[rowKey]*store.Row{}, map[store.Key]store.Policy{}
	r.mu.Unlock()
	if len(rows) == 0 && len(policies) == 0 {
		return nil
	}
	batch := make([]store.Row, 0, len(rows))
	for _, row := range rows {
		r := *row
		r.FP = fingerprint(r.Data)
		batch = append(batch, r)
	}
	pols := make([]store.Policy, 0, len(policies))
	for _, p := range policies {
		pols = append(pols, p)
	}
	if err := r.st.Add(ctx, batch, pols); err != nil {
		// Put the counts back, merged with what came meanwhile.
		r.mu.Lock()
		for key, row := range rows {
			if e, ok := r.rows[key]; ok {
				e.Count += row.Count
			} else {
				r.rows[key] = row
			}
		}
		for k, p := range policies {
			if _, ok := r.policies[k]; !ok {
				r.policies[k] = p
			}
		}
		r.mu.Unlock()
		return err
	}
	return nil
}
