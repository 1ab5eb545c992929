package accounts

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// File is a parsed and validated accounts file: every account with its
// presets filled in and its secrets loaded.
type File struct {
	name     string
	accounts []*Account
	byID     map[string]*Account
}

// Accounts returns the accounts in file order.
func (f *File) Accounts() []*Account {
	return append([]*Account(nil), f.accounts...)
}

// Account returns the account with the given id.
func (f *File) Account(id string) (*Account, bool) {
	a, ok := f.byID[id]
	return a, ok
}

// ParseOptions tells Parse where the file came from and how to reach the
// environment and the file system. The zero value uses the process
// environment, the os file system and the working directory.
type ParseOptions struct {
	// Name is the file name used at the start of every error message, such
	// as "accounts.yaml". Default: none. Load sets it to the path it reads.
	Name string
	// BaseDir is the directory relative paths in the file (ca_file, *_file)
	// are resolved against: the directory of the accounts file. Default:
	// the working directory.
	BaseDir string
	// Getenv looks up the environment variables named by *_env keys.
	// Default os.Getenv.
	Getenv func(string) string
	// ReadFile reads the files named by *_file and ca_file keys. Default
	// os.ReadFile.
	ReadFile func(string) ([]byte, error)
}

// Load reads, parses and validates the accounts file at path. Relative paths
// inside it are resolved against the file's directory, secrets are read from
// the process environment and the file system, and error messages start
// with path. See Parse.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load accounts: %w", err)
	}
	return Parse(data, ParseOptions{Name: path, BaseDir: filepath.Dir(path)})
}

// Parse parses and validates an accounts file. It reports every problem it
// finds, joined with errors.Join; each is a *FieldError naming the file, the
// account and the field.
func Parse(data []byte, opts ParseOptions) (*File, error) {
	if opts.Getenv == nil {
		opts.Getenv = os.Getenv
	}
	if opts.ReadFile == nil {
		opts.ReadFile = os.ReadFile
	}
	p := &parser{opts: opts}

	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, &FieldError{File: opts.Name, Err: err}
	}
	var raw rawFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	err := dec.Decode(&raw)
	var typeErr *yaml.TypeError
	switch {
	case errors.Is(err, io.EOF):
		return nil, &FieldError{File: opts.Name, Err: errors.New("file is empty")}
	case errors.As(err, &typeErr):
		p.typeErrors(&root, &raw, typeErr)
	case err != nil:
		return nil, &FieldError{File: opts.Name, Err: err}
	}
	if err := dec.Decode(new(yaml.Node)); !errors.Is(err, io.EOF) {
		p.errs = append(p.errs, &FieldError{File: opts.Name, Err: errors.New("only one YAML document is allowed")})
	}

	f := &File{name: opts.Name, byID: make(map[string]*Account)}
	if len(raw.Accounts) == 0 && len(p.errs) == 0 {
		p.fail("", "accounts", "at least one account is required")
	}
	for i := range raw.Accounts {
		a := p.account(i, &raw.Accounts[i])
		if a.ID == "" {
			continue
		}
		if _, dup := f.byID[a.ID]; dup {
			p.fail(a.label, "id", "duplicate account id %q", a.ID)
			continue
		}
		f.byID[a.ID] = a
		f.accounts = append(f.accounts, a)
	}
	if len(p.errs) > 0 {
		return nil, errors.Join(p.errs...)
	}
	return f, nil
}

// FieldError is one problem in an accounts file. Its message reads
// `accounts.yaml: account "support": oauth.client_secret_env: environment
// variable SUPPORT_CLIENT_SECRET is not set`; parts that do not apply are
// left out. It never contains a secret.
type FieldError struct {
	File    string // the file name from ParseOptions.Name; may be empty
	Account string // `account "support"`, or `account #2` when it has no id
	Field   string // dotted YAML path inside the account, such as "smtp.port"
	Err     error
}

// Error implements error.
func (e *FieldError) Error() string {
	var b strings.Builder
	for _, part := range []string{e.File, e.Account, e.Field} {
		if part != "" {
			b.WriteString(part)
			b.WriteString(": ")
		}
	}
	b.WriteString(e.Err.Error())
	return b.String()
}

// Unwrap returns the cause.
func (e *FieldError) Unwrap() error { return e.Err }

// parser collects the errors of one Parse call.
type parser struct {
	opts ParseOptions
	errs []error
}

func (p *parser) fail(account, field, format string, args ...any) {
	p.failErr(account, field, fmt.Errorf(format, args...))
}

func (p *parser) failErr(account, field string, err error) {
	p.errs = append(p.errs, &FieldError{File: p.opts.Name, Account: account, Field: field, Err: err})
}

// path resolves a path from the file against BaseDir.
func (p *parser) path(name string) string {
	if filepath.IsAbs(name) || p.opts.BaseDir == "" {
		return name
	}
	return filepath.Join(p.opts.BaseDir, name)
}

// yamlLineError matches the messages of *yaml.TypeError.
var yamlLineError = regexp.MustCompile(`^line (\d+): (.*)$`)

// unknownField matches yaml.v3's message for a key KnownFields rejects.
var unknownField = regexp.MustCompile(`^field (\S+) not found in type \S+$`)

// typeErrors turns the errors of a strict decode into FieldErrors that name
// the account and the field, found by line in the document's node tree.
func (p *parser) typeErrors(root *yaml.Node, raw *rawFile, te *yaml.TypeError) {
	items := accountNodes(root)
	for _, msg := range te.Errors {
		m := yamlLineError.FindStringSubmatch(msg)
		if m == nil {
			p.failErr("", "", errors.New(msg))
			continue
		}
		line, _ := strconv.Atoi(m[1])
		text, name := m[2], ""
		if u := unknownField.FindStringSubmatch(text); u != nil {
			text, name = "unknown field", u[1]
		}
		text = fmt.Sprintf("%s (line %d)", text, line)
		// pathAt names the key at line, preferring the unknown key itself
		// when a flow mapping puts several keys on one line.
		pathAt := func(n *yaml.Node) string {
			if path, ok := keyPathNamed(n, line, name, ""); ok {
				return path
			}
			return keyPathAt(n, line, "")
		}

		// Outside the accounts list, the error is about a top-level key.
		top := ""
		if root.Kind == yaml.DocumentNode && len(root.Content) > 0 {
			top = pathAt(root.Content[0])
		}
		// The account is the last item that starts at or before line.
		idx := -1
		for i, n := range items {
			if n.Line <= line {
				idx = i
			}
		}
		if top != "accounts" || idx < 0 {
			p.failErr("", top, errors.New(text))
			continue
		}
		label := fmt.Sprintf("account #%d", idx+1)
		if idx < len(raw.Accounts) && raw.Accounts[idx].ID != "" {
			label = fmt.Sprintf("account %q", raw.Accounts[idx].ID)
		}
		p.failErr(label, pathAt(items[idx]), errors.New(text))
	}
}

// accountNodes returns the items of the top-level "accounts" sequence.
func accountNodes(root *yaml.Node) []*yaml.Node {
	if root.Kind != yaml.DocumentNode || len(root.Content) == 0 {
		return nil
	}
	top := root.Content[0]
	if top.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(top.Content); i += 2 {
		if top.Content[i].Value == "accounts" && top.Content[i+1].Kind == yaml.SequenceNode {
			return top.Content[i+1].Content
		}
	}
	return nil
}

// keyPathAt returns the dotted path of the innermost mapping key in n that
// starts at or before line: the field a yaml error on that line is about.
func keyPathAt(n *yaml.Node, line int, prefix string) string {
	if n.Kind != yaml.MappingNode {
		return prefix
	}
	for i := len(n.Content) - 2; i >= 0; i -= 2 {
		key, val := n.Content[i], n.Content[i+1]
		if key.Line > line {
			continue
		}
		path := key.Value
		if prefix != "" {
			path = prefix + "." + key.Value
		}
		if key.Line == line && val.Line != line {
			return path
		}
		return keyPathAt(val, line, path)
	}
	return prefix
}

// keyPathNamed returns the dotted path of the mapping key called name on
// line, searching n and the mappings nested in it.
func keyPathNamed(n *yaml.Node, line int, name, prefix string) (string, bool) {
	if name == "" || n.Kind != yaml.MappingNode {
		return "", false
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		path := key.Value
		if prefix != "" {
			path = prefix + "." + key.Value
		}
		if key.Line == line && key.Value == name {
			return path, true
		}
		if p, ok := keyPathNamed(val, line, name, path); ok {
			return p, true
		}
	}
	return "", false
}
