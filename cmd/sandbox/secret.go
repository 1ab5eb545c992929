package main

import (
	"crypto/rand"
	"encoding/base64"
)

// randomSecret returns a fresh client secret.
func randomSecret() string {
	b := make([]byte, 24)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
