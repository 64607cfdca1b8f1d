#ifndef WFPR_SRC_CGROUP_H
#define WFPR_SRC_CGROUP_H

/* cgroup v2 paths, one way for all who name them: the eBPF loader and
 * daemon, the daemon's client, and the filters' --cgroup condition. A path
 * is absolute (under the cgroup2 mount) or relative to the mount. */

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Where the cgroup2 hierarchy is mounted; 0, or -1 when it is not. */
int wfpr__cgroup2_mount(char *out, size_t len);
/* path relative to mount, without a leading '/' ("" for the mount itself). */
const char *wfpr__cgroup_relative(const char *path, const char *mount);
/* Is process pid (0: this one) in the cgroup at path, or below it? */
bool wfpr__cgroup_holds(pid_t pid, const char *path);

#endif
