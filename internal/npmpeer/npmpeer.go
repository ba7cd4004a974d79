// Package npmpeer installs the npm packages that tests drive as real peers (emulators and
// clients written in JavaScript), from the package-lock.json of a testdata directory, once per
// directory and process. Tests fail, never skip, when node or npm is missing.
package npmpeer

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var (
	mu   sync.Mutex
	done = map[string]error{}
)

// Install makes sure dir/node_modules holds every module, running `npm ci` in dir when it does
// not. who says which tests need them, for the failure message.
func Install(t testing.TB, dir, who string, modules ...string) {
	t.Helper()
	if err := install(dir, who, modules); err != nil {
		t.Fatal(err)
	}
}

func install(dir, who string, modules []string) error {
	mu.Lock()
	defer mu.Unlock()
	if err, ok := done[dir]; ok {
		return err
	}
	err := ci(dir, who, modules)
	done[dir] = err
	return err
}

func ci(dir, who string, modules []string) error {
	if _, err := exec.LookPath("node"); err != nil {
		return fmt.Errorf("node is required by %s (CI: apt-get install -y nodejs npm): %w", who, err)
	}
	if installed(dir, modules) {
		return nil
	}
	if _, err := exec.LookPath("npm"); err != nil {
		return fmt.Errorf("npm is required to install the peers of %s in %s: %w", who, dir, err)
	}
	cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("npm ci in %s: %w\n%s", dir, err, out)
	}
	return nil
}

func installed(dir string, modules []string) bool {
	for _, m := range modules {
		if _, err := os.Stat(filepath.Join(dir, "node_modules", m)); err != nil {
			return false
		}
	}
	return true
}
