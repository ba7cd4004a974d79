package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// kafkaLogin builds the proxy's own SASL mechanism from a validated config (nil: none). A
// password_file must be readable now; it is read again at every login.
func kafkaLogin(a *KafkaSASL, log zerolog.Logger) (sasl.Mechanism, error) {
	if a == nil {
		return nil, nil
	}
	file := &passwordFile{path: a.PasswordFile, log: log, pass: a.Password}
	if a.PasswordFile != "" {
		pass, err := readPassword(a.PasswordFile)
		if err != nil {
			return nil, &keyError{key: "sasl.password_file", err: fmt.Errorf("password_file: %w", err)}
		}
		file.pass, file.version = pass, 1
	}
	password := func() string { p, _ := file.read(); return p }
	var m sasl.Mechanism
	switch strings.ToUpper(a.Mechanism) {
	case "PLAIN":
		m = plain.Plain(func(context.Context) (plain.Auth, error) {
			return plain.Auth{User: a.Username, Pass: password()}, nil
		})
	case "SCRAM-SHA-256", "SCRAM-SHA-512":
		auth := func(context.Context) (scram.Auth, error) {
			return scram.Auth{User: a.Username, Pass: password()}, nil
		}
		m = scram.Sha256(auth)
		if strings.ToUpper(a.Mechanism) == "SCRAM-SHA-512" {
			m = scram.Sha512(auth)
		}
	default:
		return nil, fmt.Errorf("mechanism %q is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", a.Mechanism)
	}
	if a.PasswordFile == "" {
		return m, nil
	}
	return fileLogin{Mechanism: m, file: file}, nil
}

// fileLogin is a login whose password is in a file: the kafka front tries a refused login again
// as soon as the file holds another password (kafka.CredentialVersioner).
type fileLogin struct {
	sasl.Mechanism
	file *passwordFile
}

func (l fileLogin) CredentialVersion() uint64 { _, v := l.file.read(); return v }

// passwordFile is a password kept in a file that may be replaced while the proxy runs (a mounted
// secret its orchestrator rotates). Each read goes to the file; one that fails, or finds it
// empty, keeps the password read before, and says so once.
type passwordFile struct {
	path string // "": pass is fixed
	log  zerolog.Logger

	mu      sync.Mutex // held over the file's read: an older read never replaces a newer one
	pass    string
	version uint64 // counts the passwords read
	failing bool   // the last read failed
}

// readPassword is the file's content without one trailing newline.
func readPassword(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	pass := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if pass == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return pass, nil
}

// read is the password the next login uses, and its version.
func (f *passwordFile) read() (string, uint64) {
	if f.path == "" {
		return f.pass, 0
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	pass, err := readPassword(f.path)
	switch {
	case err != nil:
		if !f.failing {
			f.log.Warn().Err(err).Str("password_file", f.path).Msg("kafka sasl: the password file cannot be read, or is empty: the proxy's own logins use the password read before")
		}
		f.failing = true
		return f.pass, f.version
	case f.failing:
		f.log.Info().Str("password_file", f.path).Msg("kafka sasl: the password file can be read again")
		f.failing = false
	}
	if pass != f.pass {
		if f.version > 0 {
			f.log.Info().Str("password_file", f.path).Msg("kafka sasl: the password file holds a new password: the proxy's next logins use it")
		}
		f.pass = pass
		f.version++
	}
	return f.pass, f.version
}
