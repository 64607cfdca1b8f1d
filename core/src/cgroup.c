/* cgroup v2 paths (cgroup.h). */
#include <stdio.h>
#include <string.h>
#include "cgroup.h"

int wfpr__cgroup2_mount(char *out, size_t len)
{
	FILE *f = fopen("/proc/self/mounts", "re");
	char dev[256], dir[256], type[64];
	int found = -1;
	while (f && found < 0 && fscanf(f, "%255s %255s %63s %*[^\n]", dev, dir, type) == 3)
		if (strcmp(type, "cgroup2") == 0 && (size_t)snprintf(out, len, "%s", dir) < len)
			found = 0;
	if (f)
		fclose(f);
	return found;
}

const char *wfpr__cgroup_relative(const char *path, const char *mount)
{
	size_t n = strlen(mount);
	if (strncmp(path, mount, n) == 0 && (path[n] == '/' || path[n] == '\0'))
		path += n;
	while (*path == '/')
		path++;
	return path;
}

bool wfpr__cgroup_holds(pid_t pid, const char *path)
{
	char mount[256], file[64], line[512];
	if (wfpr__cgroup2_mount(mount, sizeof(mount)) != 0)
		return false;
	const char *want = wfpr__cgroup_relative(path, mount);
	size_t n = strlen(want);
	while (n && want[n - 1] == '/')
		n--;
	if (pid)
		snprintf(file, sizeof(file), "/proc/%d/cgroup", (int)pid);
	else
		snprintf(file, sizeof(file), "/proc/self/cgroup");
	FILE *f = fopen(file, "re");
	bool found = false;
	while (f && !found && fgets(line, sizeof(line), f)) {
		if (strncmp(line, "0::/", 4) != 0)
			continue;
		const char *have = line + 4; /* "0::/a/b" -> "a/b" */
		found = n == 0 || (strncmp(have, want, n) == 0 && strchr("/\n", have[n]));
	}
	if (f)
		fclose(f);
	return found;
}
