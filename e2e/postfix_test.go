//go:build e2e

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"
)

// smtpAddr is where the private Postfix's smtpd listens.
const smtpAddr = "127.0.0.1:2525"

// mailbox is the one local recipient: a virtual(8) Maildir, so that no
// system user is needed.
const (
	mailboxDomain = "e2e.example"
	mailboxAddr   = "rcpt@" + mailboxDomain
)

// postfix is a private Postfix instance: its own config_directory,
// queue_directory, data_directory and maillog_file under dir. "postfix -c"
// with a non-default directory needs no alternate_config_directories entry
// in /etc/postfix/main.cf when run by root (that check guards the set-gid
// commands run by other users), so the system's main.cf and master.cf are
// not used; the package's meta files in /etc/postfix (postfix-script,
// postfix-files) are only read.
type postfix struct {
	dir, conf, queue, data, mail, maillog string
}

// postfixParams fill main.cf.
type postfixParams struct {
	Dir, Conf, Queue, Data, Mail, Maillog string
	Milter                                string // smtpd_milters value
	UID, GID                              string // owner of delivered mail
}

var mainCF = template.Must(template.New("main.cf").Parse(`# Private Postfix instance of dmarc-milter's end-to-end test.
compatibility_level = 3.6
config_directory = {{.Conf}}
queue_directory = {{.Queue}}
data_directory = {{.Data}}
# Postfix 3.4+: log to a file through the postlog service (master.cf).
maillog_file = {{.Maillog}}
maillog_file_prefixes = {{.Dir}}

myhostname = mx.e2e.example
mydomain = e2e.example
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
local_transport = error:no local delivery in this test
default_transport = error:no outbound mail in this test
relay_transport = error:no outbound mail in this test
biff = no
smtpd_error_sleep_time = 0

# The test client connects from loopback and then impersonates external
# addresses.
smtpd_authorized_xclient_hosts = 127.0.0.0/8

virtual_mailbox_domains = ` + mailboxDomain + `
virtual_mailbox_base = {{.Mail}}
virtual_mailbox_maps = inline:{ {` + mailboxAddr + `=rcpt/} }
virtual_uid_maps = static:{{.UID}}
virtual_gid_maps = static:{{.GID}}

smtpd_milters = {{.Milter}}
milter_default_action = tempfail
milter_protocol = 6
`))

// masterCF has the smtpd on 127.0.0.1:2525 (no port 25) and the services
// that queueing and virtual(8) delivery need; nothing is chrooted.
const masterCF = `# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:2525 inet n   -       n       -       -       smtpd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
flush     unix  n       -       n       1000?   0       flush
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`

// newPostfix writes the configuration of an instance under dir that calls
// the milter at milterSpec ("unix:/path" or "inet:127.0.0.1:port").
func newPostfix(t testing.TB, dir, milterSpec string) *postfix {
	t.Helper()
	p := &postfix{
		dir:     dir,
		conf:    filepath.Join(dir, "conf"),
		queue:   filepath.Join(dir, "queue"),
		data:    filepath.Join(dir, "data"),
		mail:    filepath.Join(dir, "mail"),
		maillog: filepath.Join(dir, "maillog"),
	}
	for _, d := range []string{p.conf, p.queue, p.data, p.mail} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	pf, err := user.Lookup("postfix")
	if err != nil {
		t.Fatalf("no postfix user (is the postfix package installed?): %v", err)
	}
	// Mail is delivered with the rights of "nobody" into a Maildir under
	// the instance directory.
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("no user nobody to deliver test mail as: %v", err)
	}
	chown(t, p.data, pf.Uid, "")
	chown(t, p.mail, nobody.Uid, nobody.Gid)

	var b strings.Builder
	err = mainCF.Execute(&b, postfixParams{
		Dir: dir, Conf: p.conf, Queue: p.queue, Data: p.data, Mail: p.mail,
		Maillog: p.maillog, Milter: milterSpec, UID: nobody.Uid, GID: nobody.Gid,
	})
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(p.conf, "main.cf"), b.String())
	write(t, filepath.Join(p.conf, "master.cf"), masterCF)
	return p
}

func chown(t testing.TB, path, uid, gid string) {
	t.Helper()
	u, err := strconv.Atoi(uid)
	if err != nil {
		t.Fatal(err)
	}
	g := -1
	if gid != "" {
		if g, err = strconv.Atoi(gid); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(path, u, g); err != nil {
		t.Fatal(err)
	}
}

func write(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// command runs a Postfix command against this instance.
func (p *postfix) command(name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, append([]string{"-c", p.conf}, args...)...)
	return cmd.CombinedOutput()
}

// start starts the instance and waits until its smtpd greets. Cleanup
// stops it.
func (p *postfix) start(t testing.TB) {
	t.Helper()
	if c, err := net.DialTimeout("tcp", smtpAddr, time.Second); err == nil {
		c.Close()
		t.Fatalf("%s is already in use; stop whatever listens there", smtpAddr)
	}
	out, err := p.command("postfix", "start")
	t.Cleanup(func() { p.stop(t) })
	if err != nil {
		t.Fatalf("postfix -c %s start: %v\n%s\nPostfix log:\n%s", p.conf, err, out, p.log(0))
	}
	ok := poll(20*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", smtpAddr, time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		return strings.HasPrefix(line, "220")
	})
	if !ok {
		t.Fatalf("Postfix does not greet on %s after 20s. Postfix log:\n%s", smtpAddr, p.log(0))
	}
}

// masterPID returns the PID of the instance's master process, 0 if it is
// not running.
func (p *postfix) masterPID() int {
	b, err := os.ReadFile(filepath.Join(p.queue, "pid", "master.pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	if syscall.Kill(pid, 0) != nil {
		return 0
	}
	return pid
}

// stop stops the instance with "postfix stop" and waits for its master to
// exit; if it does not, it kills the master's process group (master is a
// session leader, and its children stay in its group).
func (p *postfix) stop(t testing.TB) {
	pid := p.masterPID()
	if pid == 0 {
		return
	}
	if out, err := p.command("postfix", "stop"); err != nil {
		t.Logf("postfix -c %s stop: %v\n%s", p.conf, err, out)
	}
	if poll(15*time.Second, func() bool { return syscall.Kill(pid, 0) != nil }) {
		return
	}
	t.Logf("Postfix master %d still running 15s after postfix stop; killing its process group", pid)
	syscall.Kill(-pid, syscall.SIGKILL)
}

// log returns the Postfix log from byte offset off.
func (p *postfix) log(off int64) string {
	b, err := os.ReadFile(p.maillog)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if off > int64(len(b)) {
		off = int64(len(b))
	}
	return string(b[off:])
}

// logSize is the current length of the log, an offset for log.
func (p *postfix) logSize() int64 {
	fi, err := os.Stat(p.maillog)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// queueIDOf waits for cleanup(8) to log the Message-ID of a message and
// returns its queue ID: the way to name a message that was rejected at the
// end of DATA, which Postfix had queued (and then discarded) already.
func (p *postfix) queueIDOf(t testing.TB, messageID string) string {
	t.Helper()
	re := regexp.MustCompile(`postfix/cleanup\[\d+\]: ([0-9A-Za-z]+): message-id=` + regexp.QuoteMeta(messageID))
	var id string
	ok := poll(10*time.Second, func() bool {
		if m := re.FindStringSubmatch(p.log(0)); m != nil {
			id = m[1]
			return true
		}
		return false
	})
	if !ok {
		t.Fatalf("Postfix logged no queue ID for message-id %s", messageID)
	}
	return id
}

// queueEntry is one message of "postqueue -j" (postqueue(1)).
type queueEntry struct {
	QueueName string `json:"queue_name"`
	QueueID   string `json:"queue_id"`
	Sender    string `json:"sender"`
}

// queued lists the instance's queue.
func (p *postfix) queued(t testing.TB) []queueEntry {
	t.Helper()
	out, err := exec.Command("postqueue", "-c", p.conf, "-j").Output()
	if err != nil {
		t.Fatalf("postqueue -c %s -j: %v\n%s", p.conf, err, out)
	}
	var qs []queueEntry
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		var q queueEntry
		if err := json.Unmarshal(sc.Bytes(), &q); err != nil {
			t.Fatalf("postqueue -j: %v in %q", err, sc.Text())
		}
		qs = append(qs, q)
	}
	return qs
}

// delivered waits for the message with messageID to arrive in the test
// mailbox and returns it.
func (p *postfix) delivered(t testing.TB, messageID string) []byte {
	t.Helper()
	var msg []byte
	ok := poll(20*time.Second, func() bool {
		files, _ := filepath.Glob(filepath.Join(p.mail, "rcpt", "new", "*"))
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err == nil && strings.Contains(string(b), "\nMessage-ID: "+messageID+"\n") {
				msg = b
				return true
			}
		}
		return false
	})
	if !ok {
		t.Fatalf("message %s not delivered to %s within 20s", messageID, filepath.Join(p.mail, "rcpt"))
	}
	return msg
}
