package tasks_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sendq/sendq/tasks"
)

// validEmail returns an email that passes validation; tests change one thing.
func validEmail() *tasks.Email {
	return &tasks.Email{
		AccountID: "support",
		From:      "Support <support@example.com>",
		To:        []string{"alice@example.org"},
		Subject:   "Hello",
		Text:      "Hi Alice",
	}
}

func validPayload() *tasks.Payload {
	return &tasks.Payload{
		Version:   tasks.PayloadVersion,
		MessageID: "<abc123@example.com>",
		Date:      time.Date(2024, 3, 1, 12, 30, 0, 0, time.UTC),
		Email:     *validEmail(),
	}
}

func addresses(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("user%d@example.org", i)
	}
	return out
}

func TestEmailValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		change     func(e *tasks.Email)
		limits     tasks.Limits
		wantField  string // "" means valid
		wantReason string // substring of the reason
	}{
		{name: "ValidMinimal", change: func(e *tasks.Email) {}},
		{name: "ValidWithEverything", change: func(e *tasks.Email) {
			e.From = `"Jörg Müller" <jorg@example.com>`
			e.To = []string{"Alice <alice@example.org>", `"Smith, Bob" <bob@example.org>`}
			e.Cc = []string{"=?utf-8?q?Ren=C3=A9e?= <renee@example.org>"}
			e.Bcc = []string{"audit@example.com"}
			e.ReplyTo = []string{"Help <help@example.com>"}
			e.Subject = "Grüße\tund mehr"
			e.HTML = "<p>Hi</p>"
			e.Headers = []tasks.Header{{Name: "X-Campaign", Value: "spring é"}, {Name: "List-Unsubscribe", Value: "<mailto:u@example.com>"}, {Name: "X-Empty"}}
			e.Attachments = []tasks.Attachment{
				{Filename: "logo.png", Data: []byte{1}, ContentID: "logo@example.com"},
				{Filename: "rapport é.pdf", ContentType: "application/pdf", Data: []byte("%PDF")},
				{Filename: "notes.txt", ContentType: "text/plain; charset=UTF-8", Data: []byte("n")},
			}
		}},
		{name: "ValidHTMLOnly", change: func(e *tasks.Email) { e.Text, e.HTML = "", "<p>Hi</p>" }},
		{name: "ValidAttachmentOnly", change: func(e *tasks.Email) {
			e.Text = ""
			e.Attachments = []tasks.Attachment{{Filename: "a.bin"}}
		}},
		{name: "ValidBccOnly", change: func(e *tasks.Email) { e.To, e.Bcc = nil, []string{"a@example.org"} }},
		{name: "ValidQuotedLocalPart", change: func(e *tasks.Email) { e.To = []string{`"john doe"@example.org`} }},
		{name: "ValidDomainLiteral", change: func(e *tasks.Email) { e.To = []string{"root@[192.0.2.1]"} }},

		{name: "AccountMissing", change: func(e *tasks.Email) { e.AccountID = "" },
			wantField: "account_id", wantReason: "required"},
		{name: "AccountWithControlCharacter", change: func(e *tasks.Email) { e.AccountID = "a\x00b" },
			wantField: "account_id", wantReason: "control character"},
		{name: "AccountTooLong", change: func(e *tasks.Email) { e.AccountID = strings.Repeat("a", 251) },
			wantField: "account_id", wantReason: "longer than 250"},

		{name: "FromMissing", change: func(e *tasks.Email) { e.From = "" },
			wantField: "from", wantReason: "required"},
		{name: "FromWithoutAt", change: func(e *tasks.Email) { e.From = "support" },
			wantField: "from", wantReason: "missing '@'"},
		{name: "FromWithTwoAddresses", change: func(e *tasks.Email) { e.From = "a@example.com, b@example.com" },
			wantField: "from", wantReason: "expected single address"},
		{name: "ToWithoutAt", change: func(e *tasks.Email) { e.To = []string{"a@example.org", "b@example.org", "carol"} },
			wantField: "to[2]", wantReason: "missing '@'"},
		{name: "ToEmptyString", change: func(e *tasks.Email) { e.To = []string{""} },
			wantField: "to[0]", wantReason: "no address"},
		{name: "CcInvalid", change: func(e *tasks.Email) { e.Cc = []string{"<unclosed@example.org"} },
			wantField: "cc[0]", wantReason: "angle-addr"},
		{name: "BccInvalid", change: func(e *tasks.Email) { e.Bcc = []string{"ok@example.org", "@example.org"} },
			wantField: "bcc[1]", wantReason: ""},
		{name: "ReplyToInvalid", change: func(e *tasks.Email) { e.ReplyTo = []string{"nobody"} },
			wantField: "reply_to[0]", wantReason: "missing '@'"},
		{name: "AddressWithCRLF", change: func(e *tasks.Email) { e.To = []string{"a@example.org\r\nBcc: evil@example.net"} },
			wantField: "to[0]", wantReason: "line break"},
		{name: "DisplayNameWithLF", change: func(e *tasks.Email) { e.To = []string{"Eve\n <eve@example.org>"} },
			wantField: "to[0]", wantReason: "line break"},
		{name: "EncodedDisplayNameWithLF", change: func(e *tasks.Email) { e.From = "=?utf-8?q?Eve=0D=0AX?= <eve@example.org>" },
			wantField: "from", wantReason: "display name contains a line break"},
		{name: "NonASCIIAddress", change: func(e *tasks.Email) { e.To = []string{"jörg@example.org"} },
			wantField: "to[0]", wantReason: "SMTPUTF8"},
		{name: "AddressTooLong", change: func(e *tasks.Email) { e.To = []string{strings.Repeat("n", 500) + " <a@example.org>"} },
			wantField: "to[0]", wantReason: "longer than 512"},

		{name: "NoRecipients", change: func(e *tasks.Email) { e.To = nil },
			wantField: "to", wantReason: "at least one recipient"},
		{name: "TooManyRecipients", change: func(e *tasks.Email) { e.To = addresses(60); e.Bcc = addresses(101)[60:] },
			wantField: "to", wantReason: "101 distinct recipients in to, cc and bcc exceed the limit of 100"},
		{name: "DuplicateRecipientsCountOnce", change: func(e *tasks.Email) {
			e.To = addresses(100)
			e.Cc = []string{"USER1@example.org", "User2 <user2@EXAMPLE.org>"}
		}},
		{name: "CustomMaxRecipients", change: func(e *tasks.Email) { e.To = addresses(3) },
			limits: tasks.Limits{MaxRecipients: 2}, wantField: "to", wantReason: "limit of 2"},

		{name: "SubjectWithLF", change: func(e *tasks.Email) { e.Subject = "Hi\nBcc: evil@example.net" },
			wantField: "subject", wantReason: "line break"},
		{name: "SubjectWithCR", change: func(e *tasks.Email) { e.Subject = "Hi\rthere" },
			wantField: "subject", wantReason: "line break"},
		{name: "SubjectWithNUL", change: func(e *tasks.Email) { e.Subject = "Hi\x00" },
			wantField: "subject", wantReason: "control character U+0000"},
		{name: "SubjectInvalidUTF8", change: func(e *tasks.Email) { e.Subject = "Hi \xff" },
			wantField: "subject", wantReason: "not valid UTF-8"},
		{name: "SubjectTooLong", change: func(e *tasks.Email) { e.Subject = strings.Repeat("a", 990) },
			wantField: "subject", wantReason: "too long for a header line"},

		{name: "TextInvalidUTF8", change: func(e *tasks.Email) { e.Text = "\xc3" },
			wantField: "text", wantReason: "not valid UTF-8"},
		{name: "HTMLInvalidUTF8", change: func(e *tasks.Email) { e.HTML = "<p>\xc3</p>" },
			wantField: "html", wantReason: "not valid UTF-8"},
		{name: "NoContent", change: func(e *tasks.Email) { e.Text = "" },
			wantField: "text", wantReason: "one of text, html or attachments is required"},

		{name: "HeaderNameMissing", change: func(e *tasks.Email) { e.Headers = []tasks.Header{{Value: "x"}} },
			wantField: "headers[0].name", wantReason: "required"},
		{name: "HeaderNameWithColon", change: func(e *tasks.Email) { e.Headers = []tasks.Header{{Name: "X-A:b", Value: "x"}} },
			wantField: "headers[0].name", wantReason: "not a valid header field name"},
		{name: "HeaderNameWithSpace", change: func(e *tasks.Email) { e.Headers = []tasks.Header{{Name: "X A", Value: "x"}} },
			wantField: "headers[0].name", wantReason: "not a valid header field name"},
		{name: "HeaderNameWithLF", change: func(e *tasks.Email) { e.Headers = []tasks.Header{{Name: "X-A\nBcc", Value: "x"}} },
			wantField: "headers[0].name", wantReason: "line break"},
		{name: "HeaderNameNonASCII", change: func(e *tasks.Email) { e.Headers = []tasks.Header{{Name: "X-Grüße", Value: "x"}} },
			wantField: "headers[0].name", wantReason: "not a valid header field name"},
		{name: "HeaderNameTooLong", change: func(e *tasks.Email) { e.Headers = []tasks.Header{{Name: "X-" + strings.Repeat("a", 63), Value: "x"}} },
			wantField: "headers[0].name", wantReason: "longer than 64"},
		{name: "HeaderValueWithCRLF", change: func(e *tasks.Email) {
			e.Headers = []tasks.Header{{Name: "X-Ok", Value: "fine"}, {Name: "X-Tag", Value: "x\r\nBcc: evil@example.net"}}
		}, wantField: "headers[1].value", wantReason: "line break"},
		{name: "HeaderValueWithControlCharacter", change: func(e *tasks.Email) { e.Headers = []tasks.Header{{Name: "X-Tag", Value: "a\x1bb"}} },
			wantField: "headers[0].value", wantReason: "control character"},
		{name: "HeaderValueTooLong", change: func(e *tasks.Email) { e.Headers = []tasks.Header{{Name: "X-Tag", Value: strings.Repeat("v", 992)}} },
			wantField: "headers[0].value", wantReason: "too long for a header line"},

		{name: "AttachmentWithoutFilename", change: func(e *tasks.Email) { e.Attachments = []tasks.Attachment{{Data: []byte("x")}} },
			wantField: "attachments[0].filename", wantReason: "required"},
		{name: "FilenameWithLF", change: func(e *tasks.Email) { e.Attachments = []tasks.Attachment{{Filename: "a\n.txt"}} },
			wantField: "attachments[0].filename", wantReason: "line break"},
		{name: "FilenameTooLong", change: func(e *tasks.Email) { e.Attachments = []tasks.Attachment{{Filename: strings.Repeat("f", 256)}} },
			wantField: "attachments[0].filename", wantReason: "longer than 255"},
		{name: "ContentTypeMalformed", change: func(e *tasks.Email) {
			e.Attachments = []tasks.Attachment{{Filename: "a", ContentType: "text/plain; =x"}}
		},
			wantField: "attachments[0].content_type", wantReason: "not a MIME type"},
		{name: "ContentTypeWithoutSubtype", change: func(e *tasks.Email) { e.Attachments = []tasks.Attachment{{Filename: "a", ContentType: "pdf"}} },
			wantField: "attachments[0].content_type", wantReason: "want type/subtype"},
		{name: "ContentTypeMultipart", change: func(e *tasks.Email) {
			e.Attachments = []tasks.Attachment{{Filename: "a", ContentType: "multipart/mixed; boundary=x"}}
		}, wantField: "attachments[0].content_type", wantReason: "cannot be an attachment type"},
		{name: "ContentTypeMessage", change: func(e *tasks.Email) {
			e.Attachments = []tasks.Attachment{{Filename: "a.eml", ContentType: "message/rfc822"}}
		},
			wantField: "attachments[0].content_type", wantReason: "cannot be an attachment type"},
		{name: "ContentTypeWithLatin1Charset", change: func(e *tasks.Email) {
			e.Attachments = []tasks.Attachment{{Filename: "a.csv", ContentType: "text/csv; charset=iso-8859-1"}}
		}, wantField: "attachments[0].content_type", wantReason: `charset "iso-8859-1" is not supported`},
		{name: "ContentTypeWithCRLF", change: func(e *tasks.Email) {
			e.Attachments = []tasks.Attachment{{Filename: "a", ContentType: "text/plain\r\nBcc: x"}}
		}, wantField: "attachments[0].content_type", wantReason: "line break"},
		{name: "ContentIDWithAngleBrackets", change: func(e *tasks.Email) { e.Attachments = []tasks.Attachment{{Filename: "a", ContentID: "<logo>"}} },
			wantField: "attachments[0].content_id", wantReason: "no angle brackets"},
		{name: "ContentIDWithSpace", change: func(e *tasks.Email) { e.Attachments = []tasks.Attachment{{Filename: "a", ContentID: "my logo"}} },
			wantField: "attachments[0].content_id", wantReason: "may only hold"},
		{name: "ContentIDWithLF", change: func(e *tasks.Email) { e.Attachments = []tasks.Attachment{{Filename: "a", ContentID: "a\nb"}} },
			wantField: "attachments[0].content_id", wantReason: "line break"},
		{name: "ContentIDDuplicate", change: func(e *tasks.Email) {
			e.Attachments = []tasks.Attachment{{Filename: "a", ContentID: "logo"}, {Filename: "b", ContentID: "logo"}}
		}, wantField: "attachments[1].content_id", wantReason: `"logo" is also the content ID of attachments[0]`},

		{name: "TooLarge", change: func(e *tasks.Email) { e.Text = "12345678901" },
			limits: tasks.Limits{MaxBytes: 10}, wantField: "size", wantReason: "total 11 bytes, over the limit of 10"},
		{name: "SizeCountsHTMLAndAttachments", change: func(e *tasks.Email) {
			e.Text, e.HTML = "1234", "1234"
			e.Attachments = []tasks.Attachment{{Filename: "a", Data: []byte("123")}}
		}, limits: tasks.Limits{MaxBytes: 10}, wantField: "size", wantReason: "total 11 bytes"},
		{name: "SizeAtTheLimit", change: func(e *tasks.Email) { e.Text = "1234567890" }, limits: tasks.Limits{MaxBytes: 10}},
		{name: "DefaultSizeLimit", change: func(e *tasks.Email) {
			e.Attachments = []tasks.Attachment{{Filename: "big.bin", Data: make([]byte, tasks.DefaultMaxBytes)}}
		}, wantField: "size", wantReason: "over the limit of 26214400"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := validEmail()
			tt.change(e)
			err := e.ValidateLimits(tt.limits)
			if tt.wantField == "" {
				if err != nil {
					t.Fatalf("ValidateLimits() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("ValidateLimits() = nil, want an error on %s", tt.wantField)
			}
			if !errors.Is(err, tasks.ErrInvalidEmail) {
				t.Errorf("errors.Is(%v, ErrInvalidEmail) = false", err)
			}
			var ve *tasks.ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("error %T %v is not a *ValidationError", err, err)
			}
			if ve.Field != tt.wantField || !strings.Contains(ve.Reason, tt.wantReason) {
				t.Errorf("got field %q reason %q, want field %q reason containing %q", ve.Field, ve.Reason, tt.wantField, tt.wantReason)
			}
			if want := "invalid email: " + tt.wantField + ": "; !strings.HasPrefix(err.Error(), want) {
				t.Errorf("error %q does not start with %q", err, want)
			}
		})
	}
}

func TestValidateRefusesGeneratedHeaders(t *testing.T) {
	t.Parallel()
	for _, name := range []string{
		"From", "to", "CC", "Bcc", "Reply-To", "Subject", "Date", "Message-ID", "message-id",
		"MIME-Version", "Content-Type", "Content-Transfer-Encoding", "content-disposition", "Content-ID",
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := validEmail()
			e.Headers = []tasks.Header{{Name: name, Value: "x"}}
			var ve *tasks.ValidationError
			if err := e.Validate(); !errors.As(err, &ve) {
				t.Fatalf("Validate() = %v, want a *ValidationError", err)
			}
			want := fmt.Sprintf("%q is generated by sendq and cannot be overridden", name)
			if ve.Field != "headers[0].name" || !strings.HasPrefix(ve.Reason, want) {
				t.Errorf("got %q, want field headers[0].name and reason starting %q", ve.Error(), want)
			}
		})
	}
}

func TestValidationErrorMessage(t *testing.T) {
	t.Parallel()
	e := validEmail()
	e.To = []string{"a@example.org", "b@example.org", "carol"}
	err := e.Validate()
	if got, want := fmt.Sprint(err), "invalid email: to[2]: missing '@' or angle-addr"; got != want {
		t.Errorf("Validate() = %q, want %q", got, want)
	}
	if got, want := (&tasks.ValidationError{Reason: "email is nil"}).Error(), "invalid email: email is nil"; got != want {
		t.Errorf("Error() without a field = %q, want %q", got, want)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	t.Parallel()
	t.Run("JoinedFirstNamesItsField", func(t *testing.T) {
		t.Parallel()
		e := validEmail()
		e.AccountID = ""
		e.Subject = "a\nb"
		e.Bcc = []string{"nope"}
		err := e.Validate()
		lines := strings.Split(fmt.Sprint(err), "\n")
		want := []string{
			"invalid email: account_id: required",
			"invalid email: bcc[0]: missing '@' or angle-addr",
			"invalid email: subject: contains a line break (CR or LF)",
		}
		if strings.Join(lines, "|") != strings.Join(want, "|") {
			t.Errorf("Validate() =\n%v\nwant\n%s", err, strings.Join(want, "\n"))
		}
		var ve *tasks.ValidationError
		if !errors.As(err, &ve) || ve.Field != "account_id" {
			t.Errorf("errors.As found %v, want the account_id problem", ve)
		}
		if !errors.Is(err, tasks.ErrInvalidEmail) {
			t.Errorf("joined error does not match ErrInvalidEmail")
		}
	})
	t.Run("CapsTheList", func(t *testing.T) {
		t.Parallel()
		e := validEmail()
		e.To = []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"}
		lines := strings.Split(fmt.Sprint(e.Validate()), "\n")
		if len(lines) != 11 || lines[10] != "invalid email: 2 more problems" {
			t.Errorf("got %d lines ending %q, want 11 ending with \"invalid email: 2 more problems\"", len(lines), lines[len(lines)-1])
		}
	})
}

func TestLimitsWithDefaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   tasks.Limits
		want tasks.Limits
	}{
		{"ZeroMeansDefaults", tasks.Limits{}, tasks.Limits{MaxRecipients: 100, MaxBytes: 25 << 20}},
		{"NegativeMeansDefaults", tasks.Limits{MaxRecipients: -1, MaxBytes: -1}, tasks.Limits{MaxRecipients: 100, MaxBytes: 25 << 20}},
		{"KeepsSetFields", tasks.Limits{MaxRecipients: 500, MaxBytes: 1}, tasks.Limits{MaxRecipients: 500, MaxBytes: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.in.WithDefaults(); got != tt.want {
				t.Errorf("WithDefaults() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestPayloadValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		change     func(p *tasks.Payload)
		wantField  string
		wantReason string
	}{
		{name: "Valid", change: func(p *tasks.Payload) {}},
		{name: "ValidDomainLiteralMessageID", change: func(p *tasks.Payload) { p.MessageID = "<a.b@[192.0.2.1]>" }},
		{name: "ValidIdempotencyKey", change: func(p *tasks.Payload) { p.IdempotencyKey = "order-42/confirmation" }},
		{name: "WrongVersion", change: func(p *tasks.Payload) { p.Version = 2 },
			wantField: "v", wantReason: "version 2 is not 1"},
		{name: "MessageIDMissing", change: func(p *tasks.Payload) { p.MessageID = "" },
			wantField: "message_id", wantReason: "required"},
		{name: "MessageIDWithoutBrackets", change: func(p *tasks.Payload) { p.MessageID = "abc@example.com" },
			wantField: "message_id", wantReason: "malformed"},
		{name: "MessageIDWithoutAt", change: func(p *tasks.Payload) { p.MessageID = "<abc>" },
			wantField: "message_id", wantReason: "malformed"},
		{name: "MessageIDWithSpace", change: func(p *tasks.Payload) { p.MessageID = "<a b@example.com>" },
			wantField: "message_id", wantReason: "malformed"},
		{name: "MessageIDWithDoubleDot", change: func(p *tasks.Payload) { p.MessageID = "<a..b@example.com>" },
			wantField: "message_id", wantReason: "malformed"},
		{name: "MessageIDInjection", change: func(p *tasks.Payload) { p.MessageID = "<a@example.com>\r\nBcc: x@example.net" },
			wantField: "message_id", wantReason: "line break"},
		{name: "DateMissing", change: func(p *tasks.Payload) { p.Date = time.Time{} },
			wantField: "date", wantReason: "required"},
		{name: "IdempotencyKeyWithControlCharacter", change: func(p *tasks.Payload) { p.IdempotencyKey = "k\x7f" },
			wantField: "idempotency_key", wantReason: "control character"},
		{name: "EmailProblemsToo", change: func(p *tasks.Payload) { p.To = []string{"x"} },
			wantField: "to[0]", wantReason: "missing '@'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := validPayload()
			tt.change(p)
			err := p.Validate()
			if tt.wantField == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			var ve *tasks.ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Validate() = %v, want a *ValidationError", err)
			}
			if ve.Field != tt.wantField || !strings.Contains(ve.Reason, tt.wantReason) {
				t.Errorf("got field %q reason %q, want field %q reason containing %q", ve.Field, ve.Reason, tt.wantField, tt.wantReason)
			}
		})
	}
}
