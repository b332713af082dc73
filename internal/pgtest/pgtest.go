// Package pgtest starts a throwaway PostgreSQL server on the loopback
// interface for tests: initdb into a temporary folder (as the postgres user
// when the test runs as root, since PostgreSQL refuses to run as root),
// trust authentication, fsync off, stopped and removed by the test's
// cleanup. It needs Debian's postgresql package.
package pgtest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// TB is the part of testing.TB the package uses.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Skipf(format string, args ...any)
	Cleanup(func())
	TempDir() string
}

// BinDir returns the folder of the newest installed PostgreSQL's programs,
// "" if none is installed.
func BinDir() string {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[j])))
		return vi < vj
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "postgres")); err == nil {
			return dirs[i]
		}
	}
	return ""
}

// Start starts a server and returns its URL. Without PostgreSQL installed
// the test is skipped, saying so.
func Start(t TB) string {
	t.Helper()
	s := New(t)
	s.Start()
	return s.URL()
}

// Server is a PostgreSQL server of one test, which the test may start,
// stop, freeze and thaw to play a database that comes and goes. It is
// stopped by the test's cleanup.
type Server struct {
	t    TB
	dir  string
	port int
	run  func(name string, args ...string) *exec.Cmd
	srv  *exec.Cmd
	done chan struct{}
	logf *os.File
}

// New makes a server's data folder and chooses its port, without starting
// it: URL is known before the server runs. Without PostgreSQL installed
// the test is skipped, saying so.
func New(t TB) *Server {
	t.Helper()
	bin := BinDir()
	if bin == "" {
		t.Skipf("pgtest: PostgreSQL is not installed (apt-get install postgresql); test skipped")
	}
	dir, err := os.MkdirTemp("", "pgtest")
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("pgtest: running as root and there is no postgres user: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatalf("pgtest: %v", err)
		}
	}
	s := &Server{t: t, dir: dir, port: freePort(t)}
	s.run = func(name string, args ...string) *exec.Cmd {
		c := exec.Command(filepath.Join(bin, name), args...)
		c.Dir = dir
		c.Env = append(os.Environ(), "LC_ALL=C")
		if cred != nil {
			c.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		}
		return c
	}
	if out, err := s.run("initdb", "-D", s.data(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("pgtest: initdb: %v\n%s", err, out)
	}
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) data() string { return filepath.Join(s.dir, "data") }

// URL is the server's address, the same across restarts.
func (s *Server) URL() string {
	return fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)))
}

// Start starts the server and waits until it accepts connections.
func (s *Server) Start() {
	s.t.Helper()
	if s.srv != nil {
		return
	}
	srv := s.run("postgres", "-D", s.data(), "-k", s.dir, "-p", strconv.Itoa(s.port),
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "max_connections=100")
	logf, err := os.OpenFile(filepath.Join(s.dir, "postgres.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		s.t.Fatalf("pgtest: %v", err)
	}
	srv.Stdout, srv.Stderr = logf, logf
	if err := srv.Start(); err != nil {
		s.t.Fatalf("pgtest: postgres: %v", err)
	}
	s.srv, s.logf, s.done = srv, logf, make(chan struct{})
	go func() { srv.Wait(); close(s.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := s.run("pg_isready", "-h", "127.0.0.1", "-p", strconv.Itoa(s.port), "-U", "postgres").CombinedOutput()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(s.dir, "postgres.log"))
			s.t.Fatalf("pgtest: server on port %d not ready: %s\n%s", s.port, out, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop stops the server (a fast shutdown: clients are disconnected).
func (s *Server) Stop() {
	if s.srv == nil {
		return
	}
	s.signal(syscall.SIGCONT) // a frozen server could not stop
	s.srv.Process.Signal(syscall.SIGINT)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.srv.Process.Kill()
		<-s.done
	}
	s.logf.Close()
	s.srv = nil
}

// Freeze stops the server's processes, the postmaster and its backends
// (SIGSTOP to each): connections are accepted by the kernel and never
// answered, as from a hung database host. Thaw lets them run again.
func (s *Server) Freeze() { s.signal(syscall.SIGSTOP) }

// Thaw undoes Freeze.
func (s *Server) Thaw() { s.signal(syscall.SIGCONT) }

// signal sends sig to the postmaster and to its children. Each backend
// is a session leader of its own (PostgreSQL's InitPostmasterChild calls
// setsid), so a signal to the postmaster's process group would miss them:
// the children are found by their parent in /proc.
func (s *Server) signal(sig syscall.Signal) {
	if s.srv == nil {
		return
	}
	pid := s.srv.Process.Pid
	if sig == syscall.SIGSTOP {
		syscall.Kill(pid, sig) // no new backends while the others stop
	}
	for _, c := range children(pid) {
		syscall.Kill(c, sig)
	}
	if sig != syscall.SIGSTOP {
		syscall.Kill(pid, sig)
	}
}

// children lists the processes whose parent is pid.
func children(pid int) []int {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var out []int
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(b[i+1:]))
		if len(fields) < 2 || fields[1] != strconv.Itoa(pid) {
			continue
		}
		if c, err := strconv.Atoi(filepath.Base(filepath.Dir(f))); err == nil {
			out = append(out, c)
		}
	}
	return out
}

func freePort(t TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
