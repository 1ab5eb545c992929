package smtpoauthtest

import (
	"cmp"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"time"
)

// serviceAccount is a registered Google service account (domain-wide
// delegation is implied: it may impersonate any mailbox unless subjects
// restricts it).
type serviceAccount struct {
	email    string
	keyID    string
	clientID string
	key      *rsa.PublicKey
	subjects map[string]bool // nil: any
}

// serviceAccountKey is the JSON key file Google's console hands out.
type serviceAccountKey struct {
	Type                    string `json:"type"`
	ProjectID               string `json:"project_id"`
	PrivateKeyID            string `json:"private_key_id"`
	PrivateKey              string `json:"private_key"`
	ClientEmail             string `json:"client_email"`
	ClientID                string `json:"client_id"`
	AuthURI                 string `json:"auth_uri"`
	TokenURI                string `json:"token_uri"`
	AuthProviderX509CertURL string `json:"auth_provider_x509_cert_url"`
	ClientX509CertURL       string `json:"client_x509_cert_url"`
	UniverseDomain          string `json:"universe_domain"`
}

// AddServiceAccount registers a Google-style service account with
// domain-wide delegation and returns its JSON key file: type
// "service_account", client_email, a fresh RSA private key (PKCS #8 PEM),
// private_key_id and token_uri set to s.TokenURL, so that
// google.JWTConfigFromJSON accepts it. The jwt-bearer grant then issues
// tokens for the JWT's sub (the mailbox to impersonate), or for
// clientEmail itself when sub is absent. Registering an existing account
// again replaces its key. It panics if key generation fails.
func (s *Server) AddServiceAccount(clientEmail string) (keyJSON []byte) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(fmt.Sprintf("smtpoauthtest: generate service account key: %v", err))
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		panic(fmt.Sprintf("smtpoauthtest: marshal service account key: %v", err))
	}
	kid := make([]byte, 20)
	rand.Read(kid)
	n, _ := rand.Int(rand.Reader, new(big.Int).Exp(big.NewInt(10), big.NewInt(21), nil))
	sa := &serviceAccount{
		email:    clientEmail,
		keyID:    hex.EncodeToString(kid),
		clientID: fmt.Sprintf("1%020d", n),
		key:      &key.PublicKey,
	}
	project := "sendq-test"
	if _, domain, ok := strings.Cut(clientEmail, "@"); ok {
		project, _, _ = strings.Cut(domain, ".")
	}
	out, err := json.MarshalIndent(serviceAccountKey{
		Type:                    "service_account",
		ProjectID:               project,
		PrivateKeyID:            sa.keyID,
		PrivateKey:              string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		ClientEmail:             clientEmail,
		ClientID:                sa.clientID,
		AuthURI:                 s.URL + "/auth",
		TokenURI:                s.TokenURL,
		AuthProviderX509CertURL: s.URL + "/certs",
		ClientX509CertURL:       s.URL + "/certs/" + clientEmail,
		UniverseDomain:          "googleapis.com",
	}, "", "  ")
	if err != nil {
		panic(fmt.Sprintf("smtpoauthtest: marshal service account key file: %v", err))
	}
	s.mu.Lock()
	if old, ok := s.accounts[clientEmail]; ok {
		sa.subjects = old.subjects
	}
	s.accounts[clientEmail] = sa
	s.mu.Unlock()
	return out
}

// SetServiceAccountSubjects restricts the mailboxes a service account may
// impersonate (the sub of its JWT), like a Workspace administrator
// limiting domain-wide delegation. Without it any mailbox is allowed. It
// does nothing for an unknown account.
func (s *Server) SetServiceAccountSubjects(clientEmail string, subjects ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sa, ok := s.accounts[clientEmail]
	if !ok {
		return
	}
	sa.subjects = make(map[string]bool, len(subjects))
	for _, sub := range subjects {
		sa.subjects[normalizeAddress(sub)] = true
	}
}

// jwtClaims are the members of a service account assertion that matter.
type jwtClaims struct {
	Iss   string `json:"iss"`
	Scope string `json:"scope"`
	Aud   string `json:"aud"`
	Exp   int64  `json:"exp"`
	Iat   int64  `json:"iat"`
	Sub   string `json:"sub"`
	Prn   string `json:"prn"`
}

// jwtLeeway is the clock skew tolerated on iat and exp.
const jwtLeeway = 5 * time.Minute

func invalidGrant(desc string) *tokenError {
	return &tokenError{status: http.StatusBadRequest, Code: "invalid_grant", Description: desc}
}

// grantJWTBearer implements RFC 7523 as Google does for service accounts.
// The assertion's times are checked against the wall clock: the client
// signed them with it, whatever the server's test clock says.
func (s *Server) grantJWTBearer(r *http.Request) (*tokenResponse, *tokenError) {
	assertion := r.PostForm.Get("assertion")
	if assertion == "" {
		return nil, &tokenError{status: http.StatusBadRequest, Code: "invalid_request", Description: "Missing required parameter: assertion"}
	}
	parts := strings.Split(assertion, ".")
	if len(parts) != 3 {
		return nil, invalidGrant("Invalid JWT: malformed.")
	}
	var header struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
	}
	var claims jwtClaims
	if err := decodeSegment(parts[0], &header); err != nil {
		return nil, invalidGrant("Invalid JWT: malformed header.")
	}
	if err := decodeSegment(parts[1], &claims); err != nil {
		return nil, invalidGrant("Invalid JWT: malformed claims.")
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return nil, invalidGrant("Invalid JWT Signature.")
	}
	if header.Alg != "RS256" {
		return nil, invalidGrant("Invalid JWT: unsupported algorithm " + header.Alg + ".")
	}

	s.mu.Lock()
	sa := s.accounts[claims.Iss]
	s.mu.Unlock()
	if sa == nil {
		return nil, invalidGrant("Invalid grant: account not found")
	}
	if header.Kid != "" && header.Kid != sa.keyID {
		return nil, invalidGrant("Invalid JWT Signature.")
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(sa.key, crypto.SHA256, sum[:], sig); err != nil {
		return nil, invalidGrant("Invalid JWT Signature.")
	}
	if claims.Aud != s.TokenURL {
		return nil, invalidGrant("Invalid JWT: audience must be " + s.TokenURL + ".")
	}
	now := time.Now()
	iat, exp := time.Unix(claims.Iat, 0), time.Unix(claims.Exp, 0)
	if claims.Exp == 0 || claims.Iat == 0 || !now.Before(exp.Add(jwtLeeway)) || iat.After(now.Add(jwtLeeway)) ||
		exp.Sub(iat) > time.Hour {
		return nil, invalidGrant("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.")
	}
	username := cmp.Or(claims.Sub, claims.Prn, claims.Iss)
	s.mu.Lock()
	allowed := sa.subjects == nil || sa.subjects[normalizeAddress(username)] || username == sa.email
	s.mu.Unlock()
	if !allowed {
		return nil, &tokenError{status: http.StatusUnauthorized, Code: "unauthorized_client",
			Description: "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested."}
	}
	if claims.Scope == "" {
		// Google refuses an assertion without scope (a common mistake:
		// google.JWTConfigFromJSON called without scopes).
		return nil, &tokenError{status: http.StatusBadRequest, Code: "invalid_scope",
			Description: "Invalid OAuth scope or ID token audience provided."}
	}
	scope := claims.Scope
	tok := s.issue(&accessToken{clientID: sa.clientID, username: username, grantType: GrantJWTBearer, scope: scope})
	s.log.Info("token granted", "grant_type", GrantJWTBearer, "client_id", sa.email, "username", username)
	resp := s.response(tok, scope)
	return resp, nil
}

func decodeSegment(seg string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(seg, "="))
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}
