package report

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// SpoolEntry is one spooled report, as the spool commands show it.
type SpoolEntry struct {
	ID          string    `json:"id"`
	Kind        string    `json:"kind"` // "failure" or "aggregate"
	From        string    `json:"from"`
	To          string    `json:"to"`
	Domain      string    `json:"domain"`
	QueueID     string    `json:"queue_id,omitempty"`
	ReportID    string    `json:"report_id,omitempty"`
	Created     time.Time `json:"created"`
	Attempts    int       `json:"attempts"`
	NextAttempt time.Time `json:"next_attempt"`
	LastError   string    `json:"last_error,omitempty"`
	Size        int       `json:"size"` // of the message, in bytes
}

// ErrNoSuchReport is returned for an ID that is not in the spool.
var ErrNoSuchReport = errors.New("no such report in the spool")

// idRE is what a spool ID looks like (newID); anything else is refused,
// so an ID cannot name a file outside the spool.
var idRE = regexp.MustCompile(`^[0-9]{8}T[0-9.]+-[0-9a-f]+$`)

func spoolPath(dir, id string) (string, error) {
	if !idRE.MatchString(id) {
		return "", fmt.Errorf("%q is not a spool ID", id)
	}
	return filepath.Join(dir, id+spoolExt), nil
}

func entryOf(env envelope, msg []byte) SpoolEntry {
	kind := "failure"
	if env.Kind == kindAggregate {
		kind = "aggregate"
	}
	return SpoolEntry{ID: env.ID, Kind: kind, From: env.From, To: env.To, Domain: env.Domain, QueueID: env.QueueID,
		ReportID: env.ReportID, Created: env.Created, Attempts: env.Attempts, NextAttempt: env.NextAttempt,
		LastError: env.LastError, Size: len(msg)}
}

// ListSpool returns the reports in the spool directory, oldest first. It
// only reads, so it is safe while the daemon runs.
func ListSpool(dir string) ([]SpoolEntry, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("report: spool: %w", err)
	}
	var out []SpoolEntry
	for _, de := range des {
		if !strings.HasSuffix(de.Name(), spoolExt) || !de.Type().IsRegular() {
			continue
		}
		env, msg, err := readSpoolFile(filepath.Join(dir, de.Name()))
		if err != nil {
			continue // delivered or dropped meanwhile, or being written
		}
		out = append(out, entryOf(env, msg))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// ReadSpool returns one spooled report and its message.
func ReadSpool(dir, id string) (SpoolEntry, []byte, error) {
	path, err := spoolPath(dir, id)
	if err != nil {
		return SpoolEntry{}, nil, err
	}
	env, msg, err := readSpoolFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return SpoolEntry{}, nil, ErrNoSuchReport
	}
	if err != nil {
		return SpoolEntry{}, nil, fmt.Errorf("report: spool: %w", err)
	}
	return entryOf(env, msg), msg, nil
}

// RetrySpool makes a spooled report due now (its attempts kept). The file
// is rewritten atomically; a running daemon takes the new time up at its
// next look at the spool (within a minute).
func RetrySpool(dir, id string, now time.Time) error {
	path, err := spoolPath(dir, id)
	if err != nil {
		return err
	}
	env, msg, err := readSpoolFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return ErrNoSuchReport
	}
	if err != nil {
		return fmt.Errorf("report: spool: %w", err)
	}
	env.NextAttempt = now
	return writeSpoolFile(path, tmpPrefix+"cli-", env, msg)
}

// DropSpool removes a spooled report: it will not be sent. A running
// daemon notices when the report comes due (logged as dropped).
func DropSpool(dir, id string) error {
	path, err := spoolPath(dir, id)
	if err != nil {
		return err
	}
	if err := os.Remove(path); errors.Is(err, os.ErrNotExist) {
		return ErrNoSuchReport
	} else if err != nil {
		return fmt.Errorf("report: spool: %w", err)
	}
	return syncDir(dir)
}
