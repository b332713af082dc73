package outbox

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Spool files are named <id>.report and hold one line of JSON (the
// Envelope) followed by the message. Temporary files start with ".tmp-" and
// the writing Outbox's instance; at start-up those of other instances (a
// crashed process) are removed, never those being written now.
const (
	spoolExt  = ".report"
	tmpPrefix = ".tmp-"
)

// Envelope is the delivery state of one spooled message.
type Envelope struct {
	ID string `json:"id"`
	// Kind names the producer: "failure" or "aggregate". Files of earlier
	// versions without it hold failure reports.
	Kind    string `json:"kind,omitempty"`
	From    string `json:"from"`
	To      string `json:"to"`
	Domain  string `json:"domain"` // reported domain
	QueueID string `json:"queue_id,omitempty"`
	// Tag is the producer's, for its BeforeDelivery hook.
	Tag         string    `json:"tag,omitempty"`
	Created     time.Time `json:"created"`
	Attempts    int       `json:"attempts"`
	NextAttempt time.Time `json:"next_attempt"`
	LastError   string    `json:"last_error,omitempty"`
}

// noun names the kind of message in logs.
func (e Envelope) noun() string { return e.Kind + " report" }

// entry is a spooled message known to the sender.
type entry struct {
	env  Envelope
	path string
}

func newID(now time.Time) string {
	var b [6]byte
	rand.Read(b[:])
	return fmt.Sprintf("%s-%s", now.UTC().Format("20060102T150405.000000000"), hex.EncodeToString(b[:]))
}

// idRE is what a spool ID looks like (newID); anything else is refused,
// so an ID cannot name a file outside the spool.
var idRE = regexp.MustCompile(`^[0-9]{8}T[0-9.]+-[0-9a-f]+$`)

func spoolPath(dir, id string) (string, error) {
	if !idRE.MatchString(id) {
		return "", fmt.Errorf("%q is not a spool ID", id)
	}
	return filepath.Join(dir, id+spoolExt), nil
}

// writeSpoolFile writes env and msg to path atomically and durably: a
// temporary file (named with prefix) in the same directory, fsync, rename,
// fsync of the directory.
func writeSpoolFile(path, prefix string, env Envelope, msg []byte) error {
	head, err := json.Marshal(env)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, prefix)
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	w := bufio.NewWriter(f)
	w.Write(head)
	w.WriteByte('\n')
	w.Write(msg)
	if err := w.Flush(); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// readSpoolFile reads a spool file back.
func readSpoolFile(path string) (Envelope, []byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Envelope{}, nil, err
	}
	head, msg, ok := bytes.Cut(b, []byte("\n"))
	if !ok {
		return Envelope{}, nil, errors.New("no envelope line")
	}
	var env Envelope
	if err := json.Unmarshal(head, &env); err != nil {
		return Envelope{}, nil, fmt.Errorf("bad envelope: %w", err)
	}
	if env.From == "" || env.To == "" {
		return Envelope{}, nil, errors.New("envelope without sender or recipient")
	}
	if env.Kind == "" {
		env.Kind = "failure" // written by a version before aggregate reports
	}
	return env, msg, nil
}

// removeSpoolFile deletes a delivered or dropped message durably.
func (o *Outbox) removeSpoolFile(path string) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		o.log.Error().Err(err).Str("path", path).Msg("cannot remove a spooled report")
		return
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		o.log.Warn().Err(err).Str("path", filepath.Dir(path)).Msg("cannot sync the spool directory")
	}
}

// scanSpool registers the spooled messages not known yet (spooled by
// "dmarc-milter report aggregate --send", say); at start (clean) it also
// removes the temporary files a crash left.
func (o *Outbox) scanSpool(clean bool) {
	dir := o.conf().Dir
	des, err := os.ReadDir(dir)
	if err != nil {
		o.log.Error().Err(err).Str("path", dir).Msg("cannot read the spool")
		return
	}
	now := o.now()
	n := 0
	for _, de := range des {
		name := de.Name()
		path := filepath.Join(dir, name)
		switch {
		case clean && strings.HasPrefix(name, tmpPrefix) && !strings.HasPrefix(name, o.tmpPrefix):
			// Left by a crash before its rename: never complete.
			os.Remove(path)
		case strings.HasSuffix(name, spoolExt) && de.Type().IsRegular():
			o.mu.Lock()
			known := o.pending[strings.TrimSuffix(name, spoolExt)]
			o.mu.Unlock()
			if known != nil {
				// "dmarc-milter spool retry" may have made it due sooner.
				if env, _, err := readSpoolFile(path); err == nil {
					o.mu.Lock()
					if env.NextAttempt.Before(known.env.NextAttempt) {
						known.env.NextAttempt = env.NextAttempt
					}
					o.mu.Unlock()
				}
				continue
			}
			env, _, err := readSpoolFile(path)
			if err != nil {
				o.log.Error().Err(err).Str("path", path).Msg("unreadable spooled report; removed")
				o.removeSpoolFile(path)
				continue
			}
			env.NextAttempt = now
			o.mu.Lock()
			o.pending[env.ID] = &entry{env: env, path: path}
			o.mu.Unlock()
			n++
		}
	}
	if n > 0 {
		o.log.Info().Int("count", n).Str("path", dir).Msg("reports found in the spool")
	}
}
