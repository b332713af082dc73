package senders

import (
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/dmarc-milter/dmarc-milter/policy"
	"github.com/dmarc-milter/dmarc-milter/policy/dmarc"
	"github.com/dmarc-milter/dmarc-milter/report/store"
)

// Store keeps the pairs across restarts and hosts (report/store.Store).
type Store interface {
	AddSenders(ctx context.Context, senders []store.Sender) error
	Senders(ctx context.Context, since time.Time, limit int) ([]store.Sender, error)
	ExpireSenders(ctx context.Context, before time.Time) (int64, error)
}

// Recorder fills a Set from the judged messages that passed DMARC, and
// keeps it in a Store. Submit (a session consumer) only queues; the
// Organizational Domain is worked out and the store written by Run, off
// the reply path.
type Recorder struct {
	set *Set
	res dmarc.Resolver
	st  Store // nil: memory only
	log zerolog.Logger
	now func() time.Time

	// FlushInterval is how often new pairs are written to the store.
	FlushInterval time.Duration
	// LoadRetry is how often Run tries Load again while it has not
	// worked: a store that did not answer at start (a host that boots
	// before its database) still gives its pairs once it answers.
	LoadRetry time.Duration
	loaded    atomic.Bool

	queue   chan pass
	dropped atomic.Uint64

	// recent holds the (From domain, network) pairs queued within
	// renoteAfter, so that a steady sender costs a map look-up, not a
	// queue send and a wake-up of Run, per message.
	mu     sync.Mutex
	recent map[recentKey]time.Time
}

type recentKey struct {
	from string
	net  netip.Prefix
}

// renoteAfter is how long a pair is not queued again; maxRecent bounds
// the pairs remembered for that (the map is emptied beyond it).
const (
	renoteAfter = 10 * time.Minute
	maxRecent   = 10000
)

// pass is a DMARC pass to note.
type pass struct {
	from, org string // org "" when the evaluation did not need it
	net       netip.Prefix
	at        time.Time
}

// queueSize bounds the passes waiting for Run.
const queueSize = 4096

// NewRecorder returns a Recorder of set; st may be nil (nothing survives a
// restart), now nil for time.Now.
func NewRecorder(set *Set, res dmarc.Resolver, st Store, log zerolog.Logger, now func() time.Time) *Recorder {
	if now == nil {
		now = time.Now
	}
	return &Recorder{set: set, res: res, st: st, log: log.With().Str("component", "known-senders").Logger(), now: now,
		FlushInterval: time.Minute, LoadRetry: 10 * time.Second, queue: make(chan pass, queueSize), recent: map[recentKey]time.Time{}}
}

// Dropped is how many passes were not noted because Run fell behind.
func (r *Recorder) Dropped() uint64 { return r.dropped.Load() }

// Submit notes a message that passed DMARC (session.Consumer). It never
// blocks: when Run falls behind, the pass is dropped and counted. A pair
// queued in the last renoteAfter is not queued again.
func (r *Recorder) Submit(j *policy.Judged) {
	v := &j.Verdict
	if v.DMARC.Status != dmarc.Pass || v.FromErr != nil {
		return
	}
	p, ok := Network(j.ClientIP)
	if !ok {
		return
	}
	at := j.Arrival
	if at.IsZero() {
		at = r.now()
	}
	k := recentKey{v.FromDomain(), p}
	r.mu.Lock()
	last, seen := r.recent[k]
	if seen && at.Sub(last) < renoteAfter {
		r.mu.Unlock()
		return
	}
	if len(r.recent) >= maxRecent {
		clear(r.recent)
	}
	r.recent[k] = at
	r.mu.Unlock()
	select {
	case r.queue <- pass{from: v.FromDomain(), org: v.DMARC.OrgDomain, net: p, at: at}:
	default:
		r.dropped.Add(1)
	}
}

// Load fills the Set from the store: the most recent pairs of the last
// Window, at most the Set's bound. It returns how many. When it fails,
// Run tries again every LoadRetry until it works.
func (r *Recorder) Load(ctx context.Context) (int, error) {
	if r.st == nil {
		r.loaded.Store(true)
		return 0, nil
	}
	rows, err := r.st.Senders(ctx, r.now().Add(-Window), r.set.max)
	if err != nil {
		return 0, err
	}
	r.loaded.Store(true)
	// Oldest first, so that the most recent end up least likely evicted.
	n := 0
	for i := len(rows) - 1; i >= 0; i-- {
		p, err := netip.ParsePrefix(rows[i].Network)
		if err != nil {
			continue
		}
		r.set.Note(rows[i].Org, p, rows[i].Last)
		n++
	}
	return n, nil
}

// lookupTimeout bounds the Organizational Domain lookup of one pass.
const lookupTimeout = 5 * time.Second

// Run notes the queued passes until ctx ends, writing them to the store
// every FlushInterval and once more at the end. Until Load has worked, it
// tries it again every LoadRetry; the pairs loaded join those noted
// meanwhile (Set.Note keeps the latest time of each).
func (r *Recorder) Run(ctx context.Context) {
	pending := map[key]time.Time{}
	tick := time.NewTicker(r.FlushInterval)
	defer tick.Stop()
	var retry <-chan time.Time
	if !r.loaded.Load() {
		t := time.NewTicker(r.LoadRetry)
		defer t.Stop()
		retry = t.C
	}
	lastExpire := time.Time{}
	for {
		select {
		case p := <-r.queue:
			r.note(ctx, p, pending)
		case <-retry:
			lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			n, err := r.Load(lctx)
			cancel()
			if err == nil {
				r.log.Info().Int("pairs", n).Msg("known sending networks loaded: the store answers again")
				retry = nil
			}
		case <-tick.C:
			r.flush(ctx, pending)
			if now := r.now(); now.Sub(lastExpire) > time.Hour && r.st != nil {
				if _, err := r.st.ExpireSenders(ctx, now.Add(-Window)); err != nil {
					r.log.Warn().Err(err).Msg("cannot expire known senders")
				}
				lastExpire = now
			}
		case <-ctx.Done():
			for {
				select {
				case p := <-r.queue:
					r.note(context.Background(), p, pending)
					continue
				default:
				}
				break
			}
			end, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			r.flush(end, pending)
			cancel()
			return
		}
	}
}

// note adds one pass to the Set and to what the next flush writes.
func (r *Recorder) note(ctx context.Context, p pass, pending map[key]time.Time) {
	org := p.org
	if org == "" {
		lctx, cancel := context.WithTimeout(ctx, lookupTimeout)
		var err error
		org, err = dmarc.OrganizationalDomain(lctx, r.res, p.from)
		cancel()
		if err != nil {
			r.log.Debug().Err(err).Str("from_domain", p.from).Msg("organizational domain unknown: pass not noted")
			return
		}
	}
	r.set.Note(org, p.net, p.at)
	k := key{org, p.net}
	if p.at.After(pending[k]) {
		pending[k] = p.at
	}
}

// flush writes the pending pairs; on error they are kept for the next.
func (r *Recorder) flush(ctx context.Context, pending map[key]time.Time) {
	if r.st == nil || len(pending) == 0 {
		clear(pending)
		return
	}
	rows := make([]store.Sender, 0, len(pending))
	for k, at := range pending {
		rows = append(rows, store.Sender{Org: k.org, Network: k.net.String(), Last: at})
	}
	if err := r.st.AddSenders(ctx, rows); err != nil {
		r.log.Warn().Err(err).Int("pairs", len(rows)).Msg("cannot write known senders to the store; kept for the next flush")
		if len(pending) > MaxEntries {
			clear(pending) // bounded: the Set in memory still has them
		}
		return
	}
	clear(pending)
}
