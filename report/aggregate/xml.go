package aggregate

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/dmarc-milter/dmarc-milter/report/store"
)

// Namespace is RFC 9990's XML namespace.
const Namespace = "urn:ietf:params:xml:ns:dmarc-2.0"

// Feedback is an aggregate report (RFC 9990 Appendix A), the root element
// "feedback". The field order is the schema's sequence order; omitempty
// leaves out optional elements. The tags name no namespace, so that Parse
// reads reports of any version (most in the wild use none); a built report
// is written in Namespace.
type Feedback struct {
	Version         string          `xml:"version,omitempty"`
	Metadata        Metadata        `xml:"report_metadata"`
	PolicyPublished PolicyPublished `xml:"policy_published"`
	Records         []Record        `xml:"record"`
}

// Metadata is report_metadata.
type Metadata struct {
	OrgName          string    `xml:"org_name"`
	Email            string    `xml:"email"`
	ExtraContactInfo string    `xml:"extra_contact_info,omitempty"`
	ReportID         string    `xml:"report_id"`
	DateRange        DateRange `xml:"date_range"`
	Error            string    `xml:"error,omitempty"`
	Generator        string    `xml:"generator,omitempty"`
}

// DateRange is the period, in seconds since the epoch, both ends
// inclusive.
type DateRange struct {
	Begin Int `xml:"begin"`
	End   Int `xml:"end"`
}

// Int is an xs:integer read tolerantly: reports in the wild write
// "1337270400.0" or pad with spaces.
type Int int64

func (n *Int) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	if v, err := strconv.ParseInt(s, 10, 64); err == nil {
		*n = Int(v)
		return nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return fmt.Errorf("aggregate: %q is not a number", s)
	}
	*n = Int(f)
	return nil
}

// PolicyPublished is policy_published.
type PolicyPublished struct {
	Domain          string `xml:"domain"`
	P               string `xml:"p"`
	SP              string `xml:"sp,omitempty"`
	NP              string `xml:"np,omitempty"`
	ADKIM           string `xml:"adkim,omitempty"`
	ASPF            string `xml:"aspf,omitempty"`
	DiscoveryMethod string `xml:"discovery_method,omitempty"`
	FO              string `xml:"fo,omitempty"`
	Testing         string `xml:"testing,omitempty"`
}

// Record is one record: a row and its count.
type Record struct {
	Row         XMLRow      `xml:"row"`
	Identifiers Identifiers `xml:"identifiers"`
	AuthResults AuthResults `xml:"auth_results"`
}

// XMLRow is row.
type XMLRow struct {
	SourceIP        string          `xml:"source_ip"`
	Count           Int             `xml:"count"`
	PolicyEvaluated PolicyEvaluated `xml:"policy_evaluated"`
}

// PolicyEvaluated is policy_evaluated.
type PolicyEvaluated struct {
	Disposition string      `xml:"disposition"`
	DKIM        string      `xml:"dkim"`
	SPF         string      `xml:"spf"`
	Reasons     []XMLReason `xml:"reason,omitempty"`
}

// XMLReason is reason.
type XMLReason struct {
	Type    string `xml:"type"`
	Comment string `xml:"comment,omitempty"`
}

// Identifiers is identifiers.
type Identifiers struct {
	EnvelopeTo   string `xml:"envelope_to,omitempty"`
	EnvelopeFrom string `xml:"envelope_from,omitempty"`
	HeaderFrom   string `xml:"header_from"`
}

// AuthResults is auth_results: every DKIM result, then SPF.
type AuthResults struct {
	DKIM []XMLDKIM `xml:"dkim,omitempty"`
	SPF  *XMLSPF   `xml:"spf,omitempty"`
}

// XMLDKIM is one dkim of auth_results.
type XMLDKIM struct {
	Domain   string `xml:"domain"`
	Selector string `xml:"selector"`
	Result   string `xml:"result"`
}

// XMLSPF is the spf of auth_results.
type XMLSPF struct {
	Domain string `xml:"domain"`
	Scope  string `xml:"scope,omitempty"`
	Result string `xml:"result"`
}

// Parse reads an aggregate report (XML), of RFC 9990 or RFC 7489 (no
// namespace), tolerantly: unknown elements are skipped.
func Parse(data []byte) (*Feedback, error) {
	var f Feedback
	if err := xml.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("aggregate: %w", err)
	}
	return &f, nil
}

func marshalPublished(p Published) string {
	var buf [256]byte
	return string(appendPublished(buf[:0], &p))
}

// Meta is what the report says about its sender.
type Meta struct {
	OrgName, Email, ExtraContactInfo, Generator string
	// Submitter is the domain of the Mail Receiver, in the Subject, the
	// file name and the report ID.
	Submitter string
}

// Report is one built aggregate report.
type Report struct {
	Key       store.Key
	Feedback  Feedback
	Published Published
	// Messages and Records count what the report holds; Omitted* what was
	// left out for the size bound.
	Messages, OmittedMessages int64
	Records, OmittedRecords   int
	XML, Gzip                 []byte
}

// ID is the report's report_id: unique per policy domain and period for
// this submitter.
func (r *Report) ID() string { return r.Feedback.Metadata.ReportID }

// FileName is RFC 9990 Section 4.5's name for the compressed report:
// receiver!policy-domain!begin!end.xml.gz.
func (r *Report) FileName(submitter string) string {
	d := r.Feedback.Metadata.DateRange
	return fmt.Sprintf("%s!%s!%d!%d.xml.gz", submitter, r.Key.Domain, d.Begin, d.End)
}

// build makes the report of k from its rows and policy, within maxSize
// bytes of gzip (0: no bound). Beyond the bound the records with the
// fewest messages are left out and report_metadata/error says how many.
func build(k store.Key, interval time.Duration, rows []store.Row, policyData string, m Meta) (*Report, error) {
	var pub Published
	if err := json.Unmarshal([]byte(policyData), &pub); err != nil {
		return nil, fmt.Errorf("aggregate: policy of %s: %w", k, err)
	}
	rep := &Report{Key: k, Published: pub}
	rep.Feedback = Feedback{
		Version: "1.0",
		Metadata: Metadata{
			OrgName:          m.OrgName,
			Email:            m.Email,
			ExtraContactInfo: m.ExtraContactInfo,
			ReportID:         fmt.Sprintf("%d.%s@%s", k.Period, k.Domain, m.Submitter),
			DateRange:        DateRange{Begin: Int(k.Period), End: Int(k.Period + int64(interval/time.Second) - 1)},
			Generator:        m.Generator,
		},
		PolicyPublished: PolicyPublished{
			Domain: pub.Domain, P: pub.P, SP: pub.SP, NP: pub.NP, ADKIM: pub.ADKIM, ASPF: pub.ASPF,
			DiscoveryMethod: pub.Discovery, FO: pub.FO, Testing: pub.Testing,
		},
	}
	for _, sr := range rows {
		var r Row
		if err := json.Unmarshal([]byte(sr.Data), &r); err != nil {
			return nil, fmt.Errorf("aggregate: row of %s: %w", k, err)
		}
		rec := Record{
			Row: XMLRow{SourceIP: r.SourceIP, Count: Int(sr.Count), PolicyEvaluated: PolicyEvaluated{
				Disposition: r.Disposition, DKIM: r.DKIM, SPF: r.SPF,
			}},
			Identifiers: Identifiers{EnvelopeTo: r.EnvelopeTo, EnvelopeFrom: r.EnvelopeFrom, HeaderFrom: r.HeaderFrom},
		}
		if rec.Row.SourceIP == "" {
			rec.Row.SourceIP = "0.0.0.0" // a local client without an address
		}
		for _, re := range r.Reasons {
			rec.Row.PolicyEvaluated.Reasons = append(rec.Row.PolicyEvaluated.Reasons, XMLReason(re))
		}
		for _, d := range r.AuthDKIM {
			rec.AuthResults.DKIM = append(rec.AuthResults.DKIM, XMLDKIM(d))
		}
		if r.AuthSPF != nil {
			rec.AuthResults.SPF = &XMLSPF{Domain: r.AuthSPF.Domain, Scope: r.AuthSPF.Scope, Result: r.AuthSPF.Result}
		}
		rep.Feedback.Records = append(rep.Feedback.Records, rec)
		rep.Messages += sr.Count
	}
	rep.Records = len(rep.Feedback.Records)
	return rep, nil
}

// encode writes the XML and its gzip; with maxSize > 0 it leaves out the
// smallest records (rows come largest first) until the gzip fits, and
// says so in report_metadata/error (RFC 9990 leaves the bound to the
// receiver; the domain owner learns the report is partial).
func (rep *Report) encode(maxSize int) error {
	all := rep.Feedback.Records
	n := len(all)
	lo := 1 // a report keeps at least one record
	for {
		rep.Feedback.Records = all[:n]
		rep.OmittedRecords = len(all) - n
		rep.OmittedMessages = 0
		for _, r := range all[n:] {
			rep.OmittedMessages += int64(r.Row.Count)
		}
		rep.Feedback.Metadata.Error = ""
		if rep.OmittedRecords > 0 {
			rep.Feedback.Metadata.Error = fmt.Sprintf("%d of %d records (%d of %d messages) left out: the report exceeded its size bound of %d bytes",
				rep.OmittedRecords, len(all), rep.OmittedMessages, rep.Messages, maxSize)
		}
		if err := rep.marshal(); err != nil {
			return err
		}
		if maxSize <= 0 || len(rep.Gzip) <= maxSize || n <= lo {
			break
		}
		// Shrink in proportion, at least by one record.
		next := int(float64(n) * float64(maxSize) / float64(len(rep.Gzip)) * 0.95)
		n = max(lo, min(next, n-1))
	}
	rep.Records = len(rep.Feedback.Records)
	return nil
}

func (rep *Report) marshal() error {
	var b bytes.Buffer
	b.WriteString(xml.Header)
	enc := xml.NewEncoder(&b)
	enc.Indent("", "  ")
	if err := enc.EncodeElement(rep.Feedback, xml.StartElement{Name: xml.Name{Space: Namespace, Local: "feedback"}}); err != nil {
		return fmt.Errorf("aggregate: xml: %w", err)
	}
	b.WriteString("\n")
	rep.XML = b.Bytes()
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Name = strings.TrimSuffix(rep.FileName(submitterOf(rep)), ".gz")
	zw.ModTime = time.Unix(rep.Key.Period, 0)
	if _, err := zw.Write(rep.XML); err != nil {
		return fmt.Errorf("aggregate: gzip: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("aggregate: gzip: %w", err)
	}
	rep.Gzip = z.Bytes()
	return nil
}

// submitterOf reads the submitter back from the report ID.
func submitterOf(rep *Report) string {
	id := rep.Feedback.Metadata.ReportID
	return id[strings.LastIndexByte(id, '@')+1:]
}
