package smtpoauth_test

import (
	"fmt"
	"io"

	"github.com/emersion/go-smtp"

	"github.com/sendq/sendq/smtpoauth"
)

// Classify turns the error of a failed Send into what to do next. Errors
// wrapped with %w classify as the error they wrap.
func ExampleClassify() {
	failures := []error{
		// Gmail refuses a recipient.
		&smtpoauth.SendError{Stage: smtpoauth.StageRcpt, Err: &smtp.SMTPError{
			Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1},
			Message: "The email account that you tried to reach does not exist.",
		}},
		// Gmail's daily quota: a 5xx that is not permanent.
		fmt.Errorf("deliver task 42: %w", &smtpoauth.SendError{Stage: smtpoauth.StageMail, Err: &smtp.SMTPError{
			Code: 550, EnhancedCode: smtp.EnhancedCode{5, 4, 5},
			Message: "Daily user sending limit exceeded.",
		}}),
		// Microsoft 365 with SMTP AUTH switched off for the tenant.
		&smtpoauth.SendError{Stage: smtpoauth.StageAuth, Err: &smtpoauth.AuthError{
			Mechanism: smtpoauth.MechXOAUTH2,
			Reply: &smtp.SMTPError{
				Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139},
				Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
			},
		}},
		// The connection dropped while waiting for the reply to the final ".".
		&smtpoauth.SendError{Stage: smtpoauth.StageDataEnd, Err: io.ErrUnexpectedEOF},
	}
	for _, err := range failures {
		c := smtpoauth.Classify(err)
		fmt.Printf("%s retry_after=%v hold=%q\n  %s\n", c.Class, c.RetryAfter, c.Hold, c.Reason)
	}
	// Output:
	// permanent-recipient retry_after=0s hold=""
	//   recipient rejected: 550 5.1.1 The email account that you tried to reach does not exist.
	// throttle retry_after=1h0m0s hold=""
	//   daily sending quota exceeded: 550 5.4.5 Daily user sending limit exceeded.
	// needs-human retry_after=0s hold="configuration"
	//   SMTP AUTH disabled for this mailbox: 535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. — enable it in the admin center
	// ambiguous retry_after=0s hold=""
	//   connection lost after the message was sent (end of DATA or BDAT), before the reply: it may have been delivered: smtp data-end: unexpected EOF
}

// ClassifyReply judges one reply on its own, such as a rejected recipient
// that did not fail the whole submission.
func ExampleClassifyReply() {
	rcpt := &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3}, Message: "Your message has too many recipients."}
	fmt.Println(smtpoauth.ClassifyReply(smtpoauth.StageRcpt, rcpt).Class)

	end := &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "Message size exceeds fixed maximum message size"}
	fmt.Println(smtpoauth.ClassifyReply(smtpoauth.StageDataEnd, end).Reason)
	// Output:
	// transient
	// message too large: 552 5.3.4 Message size exceeds fixed maximum message size
}
