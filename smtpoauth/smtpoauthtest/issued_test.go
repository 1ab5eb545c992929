package smtpoauthtest_test

import (
	"testing"

	"golang.org/x/oauth2"

	"github.com/sendq/sendq/smtpoauth/smtpoauthtest"
)

func TestIssuedTokens(t *testing.T) {
	t.Parallel()

	t.Run("ListsEveryTokenIncludingRotatedAndRevokedOnes", func(t *testing.T) {
		t.Parallel()
		b := setup(t, smtpoauthtest.Config{RotateRefreshTokens: true})
		b.srv.AddClient("app", "s3cret")
		rt := b.srv.NewRefreshToken("app", "alice@example.com")
		tok, err := refresh(t, b.srv, oauthConfig(b.srv, oauth2.AuthStyleInParams), rt)
		if err != nil {
			t.Fatal(err)
		}
		direct := b.srv.IssueAccessToken("alice@example.com")
		b.srv.Revoke(tok.RefreshToken)

		want := []smtpoauthtest.IssuedToken{
			{Kind: smtpoauthtest.IssuedRefresh, Token: rt, Username: "alice@example.com"},
			{Kind: smtpoauthtest.IssuedRefresh, Token: tok.RefreshToken, Username: "alice@example.com"},
			{Kind: smtpoauthtest.IssuedAccess, Token: tok.AccessToken, Username: "alice@example.com", Grant: smtpoauthtest.GrantRefreshToken},
			{Kind: smtpoauthtest.IssuedAccess, Token: direct, Username: "alice@example.com", Grant: "direct"},
		}
		got := b.srv.IssuedTokens()
		if len(got) != len(want) {
			t.Fatalf("IssuedTokens() has %d tokens, want %d", len(got), len(want))
		}
		for i := range want {
			if got[i].Kind != want[i].Kind || got[i].Token != want[i].Token {
				t.Errorf("token %d: kind %s, want %s (or another token)", i, got[i].Kind, want[i].Kind)
			}
			if got[i].Username != want[i].Username || got[i].Grant != want[i].Grant {
				t.Errorf("token %d: for %q by grant %q, want %q by %q", i, got[i].Username, got[i].Grant, want[i].Username, want[i].Grant)
			}
			if !got[i].At.Equal(b.clock.Now()) {
				t.Errorf("token %d issued at %s, want the server clock %s", i, got[i].At, b.clock.Now())
			}
		}
	})
}
