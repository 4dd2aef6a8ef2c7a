/*
 * Files on a shared machine: what the agent creates is private by default
 * (0600, folders 0700) or as [reporter.file] mode says, whatever the umask;
 * nothing planted at a name (a symlink, a file) is followed or written
 * through; a folder others could write into without the sticky bit, or one
 * of another user, is refused; the log file is opened without following a
 * link. And configuration messages never show a secret key's value.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/base/base.h"
#include "check.h"
#include "rules/config.h"
#include "rules/keys.h"

static char root[256];

static void path_of(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", root, name);
}

static unsigned mode_of(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0 ? (unsigned)(st.st_mode & 07777) : 0xffffu;
}

static char *slurp(const char *path)
{
    static char buf[4096];
    long n = holmes__read_file(path, buf, sizeof(buf));
    return n >= 0 ? buf : NULL;
}

static void test_modes_whatever_the_umask(void)
{
    char dir[512], file[600];
    path_of(dir, sizeof(dir), "private/a/b");
    mode_t old = umask(0);
    CHECK_EQ_INT(holmes__write_atomic(strcat(strcpy(file, dir), "/x.json"), "{}", 2), 0);
    CHECK_EQ_INT(mode_of(file), 0600);
    CHECK_EQ_INT(mode_of(dir), 0700);
    path_of(dir, sizeof(dir), "private/a");
    CHECK_EQ_INT(mode_of(dir), 0700);
    /* A group-shared mode holds under a strict umask too. */
    umask(077);
    char why[512];
    path_of(dir, sizeof(dir), "shared");
    int dfd = holmes__dir_open(dir, holmes__dir_mode_for(0640), true, why, sizeof(why));
    CHECK(dfd >= 0);
    CHECK_EQ_INT(holmes__write_at(dfd, "y.txt", "hello", 5, 0640), 0);
    close(dfd);
    umask(old);
    snprintf(file, sizeof(file), "%s/y.txt", dir);
    CHECK_EQ_INT(mode_of(file), 0640);
    CHECK_EQ_INT(holmes__dir_mode_for(0640), 0750);
    CHECK_EQ_INT(holmes__dir_mode_for(0600), 0700);
    CHECK_EQ_INT(holmes__dir_mode_for(0660), 0770);
    CHECK_EQ_INT(holmes__dir_mode_for(0644), 0755);
}

/* A symlink planted at the final name is replaced, and its target untouched. */
static void test_planted_symlink_is_replaced(void)
{
    char dir[512], victim[600], link[600], why[512];
    path_of(dir, sizeof(dir), "plant");
    path_of(victim, sizeof(victim), "victim.txt");
    FILE *f = fopen(victim, "w");
    fputs("original", f);
    fclose(f);
    int dfd = holmes__dir_open(dir, 0700, true, why, sizeof(why));
    CHECK(dfd >= 0);
    snprintf(link, sizeof(link), "%s/dump.json", dir);
    CHECK_EQ_INT(symlink(victim, link), 0);
    CHECK_EQ_INT(holmes__write_at(dfd, "dump.json", "{\"a\":1}", 7, 0600), 0);
    CHECK_STR(slurp(victim), "original");
    struct stat st;
    CHECK(lstat(link, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 7);
    /* Rewriting an existing file replaces it whole. */
    CHECK_EQ_INT(holmes__write_at(dfd, "dump.json", "{}", 2, 0600), 0);
    CHECK_STR(slurp(link), "{}");
    close(dfd);
    /* Through the path API as well (the spool's). */
    char spool_item[700];
    snprintf(spool_item, sizeof(spool_item), "%s/item.upload", dir);
    CHECK_EQ_INT(symlink(victim, spool_item), 0);
    CHECK_EQ_INT(holmes__write_atomic(spool_item, "body", 4), 0);
    CHECK_STR(slurp(victim), "original");
    CHECK_STR(slurp(spool_item), "body");
}

static void test_folders_refused(void)
{
    char dir[512], why[512];
    path_of(dir, sizeof(dir), "open-to-all");
    CHECK_EQ_INT(mkdir(dir, 0700), 0);
    CHECK_EQ_INT(chmod(dir, 0777), 0);
    CHECK_EQ_INT(holmes__dir_open(dir, 0700, true, why, sizeof(why)), -EPERM);
    CHECK(strstr(why, "writable by every user and has no sticky bit") != NULL);
    CHECK(strstr(why, dir) != NULL);
    CHECK_EQ_INT(holmes__mkdirs(dir), -EPERM);
    /* With the sticky bit (as /tmp) it is usable: nobody can replace our files. */
    CHECK_EQ_INT(chmod(dir, 01777), 0);
    int dfd = holmes__dir_open(dir, 0700, true, why, sizeof(why));
    CHECK(dfd >= 0);
    if (dfd >= 0)
        close(dfd);
    if (geteuid() != 0) {
        SKIP_PART("folders of another user and their symlinks: chown needs root");
        return;
    }
    char theirs[600];
    snprintf(theirs, sizeof(theirs), "%s/theirs", dir);
    CHECK_EQ_INT(mkdir(theirs, 0700), 0);
    CHECK_EQ_INT(chown(theirs, 65534, 65534), 0);
    CHECK_EQ_INT(holmes__dir_open(theirs, 0700, true, why, sizeof(why)), -EPERM);
    CHECK(strstr(why, "owned by another user") != NULL);
    /* A symlink another user planted in a folder open to all is not followed. */
    char elsewhere[512], link[600];
    path_of(elsewhere, sizeof(elsewhere), "elsewhere");
    CHECK_EQ_INT(mkdir(elsewhere, 0700), 0);
    snprintf(link, sizeof(link), "%s/dumps", dir);
    CHECK_EQ_INT(symlink(elsewhere, link), 0);
    CHECK_EQ_INT(lchown(link, 65534, 65534), 0);
    CHECK_EQ_INT(holmes__dir_open(link, 0700, true, why, sizeof(why)), -ELOOP);
    char inside[700];
    snprintf(inside, sizeof(inside), "%s/dumps/spool/x.upload", dir);
    CHECK(holmes__write_atomic(inside, "x", 1) != 0);
    snprintf(inside, sizeof(inside), "%s/spool", elsewhere);
    CHECK(access(inside, F_OK) != 0);
    /* Our own link there is followed (it is not another user's). */
    CHECK_EQ_INT(lchown(link, 0, 0), 0);
    dfd = holmes__dir_open(link, 0700, true, why, sizeof(why));
    CHECK(dfd >= 0);
    if (dfd >= 0)
        close(dfd);
}

static void test_log_file(void)
{
    char path[512], victim[512], why[512];
    path_of(path, sizeof(path), "agent.log");
    int fd = holmes__open_append(path, 0600, why, sizeof(why));
    CHECK(fd >= 0);
    CHECK(write(fd, "a\n", 2) == 2);
    close(fd);
    CHECK_EQ_INT(mode_of(path), 0600);
    fd = holmes__open_append(path, 0600, why, sizeof(why)); /* appends to our own */
    CHECK(fd >= 0 && write(fd, "b\n", 2) == 2);
    if (fd >= 0)
        close(fd);
    CHECK_STR(slurp(path), "a\nb\n");
    path_of(victim, sizeof(victim), "victim.txt");
    char linked[512];
    path_of(linked, sizeof(linked), "linked.log");
    CHECK_EQ_INT(symlink(victim, linked), 0);
    CHECK(holmes__open_append(linked, 0600, why, sizeof(why)) < 0);
    CHECK(strstr(why, "symlink") != NULL);
    char hard[512];
    path_of(hard, sizeof(hard), "hard.log");
    CHECK_EQ_INT(link(victim, hard), 0);
    CHECK_EQ_INT(holmes__open_append(hard, 0600, why, sizeof(why)), -EPERM);
    CHECK_STR(slurp(victim), "original");
}

static void test_mode_key(void)
{
    unsigned m = 0;
    char why[256];
    CHECK(holmes__parse_mode("0640", &m, why, sizeof(why)) && m == 0640);
    CHECK(holmes__parse_mode("600", &m, why, sizeof(why)) && m == 0600);
    CHECK(!holmes__parse_mode("0666", &m, why, sizeof(why)));
    CHECK(strstr(why, "every local user") != NULL);
    CHECK(!holmes__parse_mode("0602", &m, why, sizeof(why)));
    CHECK(!holmes__parse_mode("0800", &m, why, sizeof(why)));
    CHECK(!holmes__parse_mode("4700", &m, why, sizeof(why)));
    CHECK(!holmes__parse_mode("rw-r-----", &m, why, sizeof(why)));
    holmes__config c;
    char errors[2048];
    holmes__config_defaults(&c);
    CHECK_EQ_INT(c.file_mode, 0600);
    CHECK_EQ_INT(
        holmes__config_parse(&c, "[reporter.file]\nmode = 0640\n", "t.ini", errors, sizeof(errors)),
        0);
    CHECK_EQ_INT(c.file_mode, 0640);
    holmes__config_defaults(&c);
    CHECK_EQ_INT(holmes__config_parse(&c, "[reporter.file]\n\nmode = 0777\n", "t.ini", errors,
                                      sizeof(errors)),
                 1);
    CHECK(strstr(errors, "t.ini:3: [reporter.file] mode:") != NULL);
}

/* Parses text; returns the error text (static). */
static const char *errors_of(const char *text)
{
    static char errors[4096];
    holmes__config c;
    holmes__config_defaults(&c);
    errors[0] = 0;
    holmes__config_parse(&c, text, "t.ini", errors, sizeof(errors));
    return errors;
}

static void test_secrets_never_shown(void)
{
    const char *e = errors_of("[reporter.pyroscope]\nurl = http://x\nbasic_auth = hunter2secret\n");
    CHECK(strstr(e, "t.ini:3: [reporter.pyroscope] basic_auth:") != NULL);
    CHECK(strstr(e, "hunter2secret") == NULL);
    CHECK(strstr(e, "<secret, not shown>") != NULL);
    /* An unset variable: the message quotes the value as written. */
    e = errors_of("[reporter.pyroscope]\nurl = http://x\nbasic_auth = ops:pw-${NO_SUCH_VAR_18}\n");
    CHECK(strstr(e, "NO_SUCH_VAR_18 is not set") != NULL);
    CHECK(strstr(e, "ops:pw") == NULL);
    /* Expanded from the environment, then rejected: not shown either. */
    setenv("HOLMES_TEST_SECRET_18", "tok3n-from-env", 1);
    e = errors_of("[reporter.pyroscope]\nurl = http://x\nbasic_auth = ${HOLMES_TEST_SECRET_18}\n");
    CHECK(*e && strstr(e, "tok3n-from-env") == NULL);
    /* The bearer token too: a token partly literal, partly from an unset variable. */
    e = errors_of("[reporter.pyroscope]\nurl = https://x\nbearer_token = glc_abc123${NO_VAR_18}\n");
    CHECK(strstr(e, "t.ini:3: [reporter.pyroscope] bearer_token:") != NULL);
    CHECK(strstr(e, "glc_abc123") == NULL);
    /* Any key flagged secret gets it; others are quoted as before. */
    const holmes__key *auth = holmes__key_find(HOLMES_SEC_PYROSCOPE, "basic_auth");
    CHECK(auth && (auth->flags & HOLMES_KEY_SECRET));
    char why[40];
    snprintf(why, sizeof(why), "bad value: 'abcdefghijklmnopqrstuvwxyz'");
    holmes__key_redact(auth, "abcdefghijklmnopqrstuvwxyz", why, sizeof(why));
    CHECK(strstr(why, "abcdef") == NULL); /* cut short at the end of a full message */
    const holmes__key *url = holmes__key_find(HOLMES_SEC_PYROSCOPE, "url");
    e = errors_of("[reporter.pyroscope]\nurl = ftp://host\n");
    CHECK(url && !(url->flags & HOLMES_KEY_SECRET) && strstr(e, "ftp://host") != NULL);
}

static void test_plain_http_warning(void)
{
    holmes__config c;
    char errors[1024], warning[512];
    holmes__config_defaults(&c);
    CHECK_EQ_INT(holmes__config_parse(&c,
                                      "[reporter.pyroscope]\nurl = http://pyro:4040\n"
                                      "basic_auth = u:verysecret\n",
                                      "t.ini", errors, sizeof(errors)),
                 0);
    CHECK(holmes__config_secret_warning(&c, warning, sizeof(warning)));
    CHECK(strstr(warning, "basic_auth") && strstr(warning, "http://"));
    CHECK(strstr(warning, "verysecret") == NULL);
    snprintf(c.pyro_bearer_token, sizeof(c.pyro_bearer_token), "tok");
    CHECK(holmes__config_secret_warning(&c, warning, sizeof(warning)));
    CHECK(strstr(warning, "basic_auth and bearer_token") != NULL);
    snprintf(c.pyro_url, sizeof(c.pyro_url), "https://pyro:4040");
    CHECK(!holmes__config_secret_warning(&c, warning, sizeof(warning)));
    snprintf(c.pyro_url, sizeof(c.pyro_url), "http://pyro:4040");
    c.pyro_basic_auth[0] = 0;
    c.pyro_bearer_token[0] = 0;
    CHECK(!holmes__config_secret_warning(&c, warning, sizeof(warning)));
}

int main(void)
{
    snprintf(root, sizeof(root), "/tmp/holmes-safe-files-XXXXXX");
    if (!mkdtemp(root))
        SKIP_TEST("cannot make a folder under /tmp: %s", strerror(errno));
    test_modes_whatever_the_umask();
    test_planted_symlink_is_replaced();
    test_folders_refused();
    test_log_file();
    test_mode_key();
    test_secrets_never_shown();
    test_plain_http_warning();
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", root);
    CHECK_DONE();
}
