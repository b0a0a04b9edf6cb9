package kafkacluster

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// classArchive is a JVM class-data archive (AppCDS) for one JDK build and
// one Kafka release's jars, kept beside the jars: a node that maps it
// starts with about 40 % less CPU. The first node started without one
// writes it when it exits normally (-XX:ArchiveClassesAtExit); a JVM that
// cannot use it (another JDK build, changed jars) says so in its output
// and starts without it.
type classArchive struct {
	path string

	mu      sync.Mutex
	writing bool // a node of this cluster is to write the archive
}

func newClassArchive(java, libs string) *classArchive {
	id := java
	if real, err := filepath.EvalSymlinks(java); err == nil {
		id = real
	}
	// The JDK's release file names its exact build.
	release, _ := os.ReadFile(filepath.Join(filepath.Dir(filepath.Dir(id)), "release"))
	sum := sha256.Sum256([]byte(id + "\x00" + string(release)))
	a := &classArchive{path: filepath.Join(filepath.Dir(libs), fmt.Sprintf("classes-%x.jsa", sum[:6]))}
	// A node that died with its parent leaves its unfinished archive.
	stale, _ := filepath.Glob(a.path + ".tmp-*")
	for _, f := range stale {
		if fi, err := os.Stat(f); err == nil && time.Since(fi.ModTime()) > time.Hour {
			os.Remove(f)
		}
	}
	return a
}

// useFlags are the JVM options of a short-lived tool: the archive when
// there is one.
func (a *classArchive) useFlags() []string {
	if _, err := os.Stat(a.path); err == nil {
		return []string{"-XX:SharedArchiveFile=" + a.path}
	}
	return nil
}

// nodeFlags are the JVM options of a node to launch and, when that node is
// to write the archive, the temporary file it writes it to.
func (a *classArchive) nodeFlags() (flags []string, writeTo string) {
	if f := a.useFlags(); f != nil {
		return f, ""
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.writing {
		return nil, ""
	}
	a.writing = true
	writeTo = a.path + ".tmp-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	// Writing it lists every class it leaves out; keep that quiet.
	return []string{"-XX:ArchiveClassesAtExit=" + writeTo, "-Xlog:cds*=off"}, writeTo
}

// finish puts the archive a node wrote as it exited in place, or throws
// away what a killed node left.
func (a *classArchive) finish(writeTo string, exit *os.ProcessState) {
	if writeTo == "" {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.writing = false
	if fi, err := os.Stat(writeTo); err == nil && fi.Size() > 0 && exit != nil && exit.Exited() {
		if os.Rename(writeTo, a.path) == nil {
			return
		}
	}
	os.Remove(writeTo)
}
