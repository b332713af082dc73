package rfc5322

import (
	"errors"
	"reflect"
	"testing"
)

func TestSplit(t *testing.T) {
	for _, tt := range []struct {
		name   string
		raw    string
		fields []Field
		body   string
		err    bool
	}{
		{name: "LF message: folds as bare LF, leading space kept, body CRLF",
			raw:    "From: a@example.com\nSubject: one\n two\n\nline 1\nline 2\n",
			fields: []Field{{"From", " a@example.com"}, {"Subject", " one\n two"}}, body: "line 1\r\nline 2\r\n"},
		{name: "CRLF message", raw: "To:x\r\n\r\nbody\r\n", fields: []Field{{"To", "x"}}, body: "body\r\n"},
		{name: "no body", raw: "From: a@example.com\n", fields: []Field{{"From", " a@example.com"}}},
		{name: "a line without a colon", raw: "From a@example.com\n\nbody", err: true},
		{name: "a name with a space", raw: "Bad Name: x\n\n", err: true},
		{name: "empty", raw: "", err: true},
	} {
		fields, body, err := Split([]byte(tt.raw))
		if (err != nil) != tt.err {
			t.Errorf("%s: error %v", tt.name, err)
			continue
		}
		if !tt.err && (!reflect.DeepEqual(fields, tt.fields) || string(body) != tt.body) {
			t.Errorf("%s: got %q %q, want %q %q", tt.name, fields, body, tt.fields, tt.body)
		}
	}
}

func TestCRLF(t *testing.T) {
	for _, tt := range []struct {
		name, in, want string
	}{
		{name: "bare LF", in: "a\nb\n", want: "a\r\nb\r\n"},
		{name: "CRLF kept", in: "a\r\nb\r\n", want: "a\r\nb\r\n"},
		{name: "mixed", in: "a\r\nb\nc", want: "a\r\nb\r\nc"},
		{name: "leading LF", in: "\nx", want: "\r\nx"},
		{name: "lone CR kept", in: "a\rb\n", want: "a\rb\r\n"},
		{name: "none", in: "abc", want: "abc"},
	} {
		if got := string(CRLF([]byte(tt.in))); got != tt.want {
			t.Errorf("%s: CRLF(%q) = %q, want %q", tt.name, tt.in, got, tt.want)
		}
	}
}

func TestRebuildField(t *testing.T) {
	tests := []struct {
		name, value  string
		leadingSpace bool
		want         string
	}{
		{"Subject", " hi", true, "Subject: hi\r\n"},
		{"To", "bob@example.net", true, "To:bob@example.net\r\n"},
		{"Subject", "  Folded\n\t subject ", true, "Subject:  Folded\r\n\t subject \r\n"},
		{"Subject", "hi", false, "Subject: hi\r\n"},
		{"X", "a\n b\r\n c", false, "X: a\r\n b\r\n c\r\n"},
		{"X", "", true, "X:\r\n"},
	}
	for _, tt := range tests {
		if got := RebuildField(tt.name, tt.value, tt.leadingSpace); got != tt.want {
			t.Errorf("RebuildField(%q, %q, %v) = %q, want %q", tt.name, tt.value, tt.leadingSpace, got, tt.want)
		}
	}
}

func TestStripComments(t *testing.T) {
	for _, tt := range []struct {
		name, in, want string
		err            error
	}{
		{name: "none", in: "multipart/report; a=b", want: "multipart/report; a=b"},
		{name: "one", in: "auto-generated (robot)", want: "auto-generated  "},
		{name: "nested", in: "a(b(c)d)e", want: "a e"},
		{name: "quoted pair", in: `a(b\)c)d`, want: "a d"},
		{name: "in quoted string kept", in: `"a (b)" c`, want: `"a (b)" c`},
		{name: "in domain literal kept", in: "x@[1.2(3)]", want: "x@[1.2(3)]"},
		{name: "unterminated", in: "mx.example (open", want: "mx.example ", err: ErrUnterminatedComment},
	} {
		got, err := StripComments(tt.in)
		if got != tt.want || !errors.Is(err, tt.err) {
			t.Errorf("%s: StripComments(%q) = %q, %v; want %q, %v", tt.name, tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestStripAddressCFWS(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{in: "Bob < bob@example.com >", want: "Bob <bob@example.com>"},
		{in: "(c) <\tbob@example.com(x)>", want: "  <bob@example.com>"},
		{in: `"a < b" <x@y>`, want: `"a < b" <x@y>`},
	} {
		if got, err := StripAddressCFWS(tt.in); got != tt.want || err != nil {
			t.Errorf("StripAddressCFWS(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

// Walk gives each byte its context: a quoted-pair never ends a construct,
// comments nest, and the edge marks the delimiters that open and close.
func TestWalk(t *testing.T) {
	for _, tt := range []struct {
		in, want string // want: one letter a byte, p(lain) q(uoted) c(omment) l(iteral), upper case on an edge
		end      Context
	}{
		{in: `a"b\"c"d`, want: "pQqqqqQp"},
		{in: `x(a(b)c)y`, want: "pCcccccCp"},
		{in: `(a\)b)`, want: "CccccC"},
		{in: `[1.2\]]z`, want: "LlllllLp"},
		{in: `"open`, want: "Qqqqq", end: Quoted},
		{in: `((a)`, want: "Cccc", end: Comment},
	} {
		var b []byte
		end := Walk(tt.in, func(i int, ctx Context, edge bool) bool {
			c := "pqcl"[ctx]
			if edge {
				c -= 'a' - 'A'
			}
			b = append(b, c)
			return true
		})
		if string(b) != tt.want || end != tt.end {
			t.Errorf("Walk(%q) = %s, ends %d; want %s, %d", tt.in, b, end, tt.want, tt.end)
		}
	}
}
