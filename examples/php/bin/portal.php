<?php

// examples/php/bin/portal.php: a command-line stand-in for the Lighthouse
// portal. Each command is one thing the portal does (a registration, the
// "Link Discord" button and its callback, a promotion, the brig, a DM, the
// auth middleware's session check, the admin page), done through the
// library in src/ as the portal's database role, and answered as one JSON
// object on stdout: {"ok": true, ...} or {"ok": false, "error": {"class",
// "sqlstate", "message", "detail", "hint"}} (exit status 2). With
// --check-unchanged the answer also says whether everything the portal's
// role can see is the same after the command as before it.
//
// Connection: LHD_PDO_DSN (e.g. pgsql:host=/run/postgresql;dbname=portal),
// LHD_PDO_USER, LHD_PDO_PASSWORD. LHD_REDIRECT_URI is the portal's OAuth2
// callback URL (lhdiscord.redirect_uri). Values that carry data (the
// content of a DM, a callback URL, import tokens) are read from stdin, not
// from the command line. Run without arguments for the list of commands.

declare(strict_types=1);

require __DIR__ . '/../autoload.php';

use Lhdiscord\Client;
use Lhdiscord\Db;
use Lhdiscord\LhdiscordException;
use Lhdiscord\PortalUsers;

const USAGE = <<<'TXT'
    usage: portal.php [--check-unchanged] COMMAND [ARGS]
      migrate [users_table|portal_sync]   run sql/users_table.sql and/or sql/portal_sync.sql
      register NAME EMAIL LEVEL [notify]   a new portal user (public.users)
      grant-role USER ROLE             a portal role (lhdiscord.user_roles)
      link USER                        OAuth2: begin, the browser at Discord, the callback
      link-begin USER                  OAuth2: the authorization URL only
      browser URL                      the user's browser at Discord: the callback URL
      link-callback USER               OAuth2 callback; the callback URL on stdin
      link-import USER DISCORD_ID NAME [LANE]   import; optional tokens JSON on stdin
      promote USER LEVEL | staff USER DEPT|- RANK | brig USER | release USER
      in-scope USER true|false         the access-policy outcome
      touch USER                       a write lhdiscord does not care about (updated_at)
      delete USER                      delete the portal user
      notify USER NAME [LANE]          a DM; the content on stdin
      notify-then-fail USER NAME       a DM queued in a transaction that then fails
      dm-preference USER on|off        the user's notify_discord
      can-link USER | sync USER        the link gate; re-queue the user's roles
      unlink ACTOR|- ACCOUNT | revoke ADMIN|- ACCOUNT | accounts ACTOR|- USER
      login USER                       a login: the session's start time
      session USER STARTED_AT          the auth middleware's check
      has-access USER | identity USER | status-map [USER] | overview
      probe-refusals                   governance, monitor and superuser calls: refused?
    TXT;

exit(main($argv));

/** @param list<string> $argv */
function main(array $argv): int
{
    $args = array_slice($argv, 1);
    $checkUnchanged = in_array('--check-unchanged', $args, true);
    $args = array_values(array_filter($args, static fn (string $a): bool => $a !== '--check-unchanged'));
    $command = array_shift($args);
    if ($command === null || $command === 'help') {
        fwrite(STDERR, USAGE . "\n");
        return $command === null ? 64 : 0;
    }
    try {
        $db = Db::connect(env('LHD_PDO_DSN'), env('LHD_PDO_USER'), getenv('LHD_PDO_PASSWORD') ?: null);
    } catch (LhdiscordException $e) {
        return answer(['ok' => false, 'error' => error_json($e)]);
    }
    $before = $checkUnchanged ? visible_state($db) : null;
    try {
        $result = ['ok' => true] + run($command, $args, $db);
    } catch (LhdiscordException $e) {
        $result = ['ok' => false, 'error' => error_json($e)];
    }
    if ($before !== null) {
        $result['visible_unchanged'] = visible_state($db) === $before;
    }
    return answer($result);
}

/**
 * One command.
 *
 * @param list<string> $a
 * @return array<string, mixed>
 */
function run(string $command, array $a, Db $db): array
{
    $client = new Client($db);
    $users = new PortalUsers($db);
    $mirror = static fn (int $id): array => ['app' => $users->find($id), 'lhdiscord' => $client->identity($id)];
    return match ($command) {
        'migrate' => migrate($db, $a[0] ?? null),
        'register' => (static function () use ($a, $users, $mirror): array {
            $password = bin2hex(random_bytes(12));
            $id = $users->register(arg($a, 0), arg($a, 1), $password, arg($a, 2), ($a[3] ?? '') === 'notify');
            return ['id' => $id] + $mirror($id);
        })(),
        'grant-role' => (static function () use ($a, $users): array {
            $users->grantRole(user($a, 0), arg($a, 1));
            return ['roles' => $users->roles(user($a, 0))];
        })(),
        'link' => link_via_oauth($client, user($a, 0)),
        'link-begin' => ['authorize_url' => $client->beginOAuth(user($a, 0))],
        'browser' => ['callback_url' => browser_at_discord(arg($a, 0))],
        'link-callback' => ['account' => $client->completeOAuthCallback(user($a, 0), trim(stdin()))],
        'link-import' => link_import($client, $a),
        'promote' => changed($users->promote(user($a, 0), arg($a, 1)), $mirror(user($a, 0))),
        'staff' => changed(
            $users->setStaff(user($a, 0), arg($a, 1) === '-' ? null : arg($a, 1), arg($a, 2)),
            $mirror(user($a, 0)),
        ),
        'brig' => changed($users->brig(user($a, 0)), $mirror(user($a, 0))),
        'release' => changed($users->release(user($a, 0)), $mirror(user($a, 0))),
        'in-scope' => changed($users->setInScope(user($a, 0), flag(arg($a, 1))), $mirror(user($a, 0))),
        'touch' => changed($users->touch(user($a, 0)), $mirror(user($a, 0))),
        'delete' => changed($users->delete(user($a, 0)), $mirror(user($a, 0))),
        'notify' => ['queued' => $client->notify(user($a, 0), arg($a, 1), stdin_or_null(), $a[2] ?? null)],
        'notify-then-fail' => notify_then_fail($db, $client, user($a, 0), arg($a, 1)),
        'dm-preference' => changed($users->setNotifyDiscord(user($a, 0), arg($a, 1) === 'on'), $mirror(user($a, 0))),
        'can-link' => ['can_link' => $client->canLink(user($a, 0))],
        'sync' => ['queued' => $client->syncPermissions(user($a, 0))],
        'unlink' => (static function () use ($a, $client): array {
            $client->unlinkAccount(actor($a, 0), user($a, 1));
            return [];
        })(),
        'revoke' => (static function () use ($a, $client): array {
            $client->revokeAccount(actor($a, 0), user($a, 1));
            return [];
        })(),
        'accounts' => [
            'accounts' => $client->accountsOf(actor($a, 0), user($a, 1)),
            'linked' => $client->hasDiscordLinked(user($a, 1)),
        ],
        'login' => ['session_started_at' => (new DateTimeImmutable())->format('Y-m-d\TH:i:s.uP')],
        'session' => $client->checkSession(user($a, 0), new DateTimeImmutable(arg($a, 1)))->toArray(),
        'has-access' => ['has_access' => $client->hasAccess(user($a, 0))],
        'identity' => ['lhdiscord' => $client->identity(user($a, 0))],
        'status-map' => ['rows' => $client->statusMap(isset($a[0]) ? user($a, 0) : null)],
        'overview' => ['rows' => $client->accountOverview()],
        'probe-refusals' => ['results' => probe_refusals($db)],
        default => throw new InvalidArgumentException("unknown command $command\n" . USAGE),
    };
}

/** @return array<string, mixed> */
function migrate(Db $db, ?string $only): array
{
    $files = $only === null ? ['users_table', 'portal_sync'] : [$only];
    foreach ($files as $f) {
        if (!in_array($f, ['users_table', 'portal_sync'], true)) {
            throw new InvalidArgumentException("no migration $f");
        }
        $db->migrate(__DIR__ . "/../sql/$f.sql");
    }
    return ['migrated' => $files];
}

/**
 * "Link Discord": the controller redirects to the authorization URL, the
 * user approves at Discord, Discord redirects the browser to the callback,
 * the callback controller completes the link.
 *
 * @return array<string, mixed>
 */
function link_via_oauth(Client $client, int $userId): array
{
    $url = $client->beginOAuth($userId);
    $callback = browser_at_discord($url);
    $expected = env('LHD_REDIRECT_URI');
    if (!str_starts_with($callback, $expected . '?')) {
        throw new RuntimeException('Discord redirected somewhere else than the callback');
    }
    // The callback URL carries the code: it is passed on, never printed.
    $account = $client->completeOAuthCallback($userId, $callback);
    return ['authorize_url' => $url, 'callback_to' => $expected, 'account' => $account];
}

/**
 * The user's browser at Discord's authorization page: it approves, and
 * Discord answers with a redirect to the portal's callback. The Location is
 * read, not followed (follow_location 0; no php-curl needed).
 */
function browser_at_discord(string $url): string
{
    $context = stream_context_create(['http' => [
        'method' => 'GET',
        'follow_location' => 0,
        'ignore_errors' => true,
        'timeout' => 10,
    ]]);
    $body = @file_get_contents($url, false, $context);
    /** @var list<string> $headers */
    $headers = $http_response_header ?? [];
    if ($body === false && $headers === []) {
        throw new RuntimeException('the authorization page could not be reached');
    }
    $status = preg_match('#^HTTP/\S+\s+(\d{3})#', $headers[0] ?? '', $m) === 1 ? (int) $m[1] : 0;
    foreach ($headers as $h) {
        if (preg_match('/^Location:\s*(\S+)/i', $h, $m) === 1 && in_array($status, [302, 303, 307], true)) {
            return $m[1];
        }
    }
    throw new RuntimeException("the authorization page answered $status without a redirect");
}

/**
 * A DM queued as part of a larger change (say, a ticket reply) that then
 * fails: the transaction rolls back, and the DM with it.
 *
 * @return array<string, mixed>
 */
function notify_then_fail(Db $db, Client $client, int $userId, string $notification): array
{
    $queued = 0;
    try {
        $db->transaction(static function () use ($client, $userId, $notification, &$queued): void {
            $queued = $client->notify($userId, $notification, 'This reply was never saved.');
            throw new RuntimeException('the ticket reply could not be saved');
        });
    } catch (LhdiscordException $e) {
        throw $e;
    } catch (RuntimeException $e) {
        return ['queued_in_transaction' => $queued, 'rolled_back' => $e->getMessage()];
    }
    throw new LogicException('the transaction did not fail');
}

/**
 * An import: link an account known from elsewhere, optionally with tokens
 * ({"access_token", "refresh_token", "expires_in"} on stdin).
 *
 * @param list<string> $a
 * @return array<string, mixed>
 */
function link_import(Client $client, array $a): array
{
    $tokens = stdin_or_null();
    $t = $tokens === null ? [] : json_decode($tokens, true, 4, JSON_THROW_ON_ERROR);
    $expires = isset($t['expires_in'])
        ? (new DateTimeImmutable())->modify('+' . (int) $t['expires_in'] . ' seconds')
        : null;
    return ['account' => $client->linkAccount(
        user($a, 0),
        arg($a, 1),
        arg($a, 2),
        accessToken: $t['access_token'] ?? null,
        refreshToken: $t['refresh_token'] ?? null,
        tokenExpiresAt: $expires,
        lane: $a[3] ?? null,
    )];
}

/**
 * Things only governance, monitoring or a superuser may do. The portal's
 * role must be refused each one (42501) and change nothing.
 *
 * @return list<array<string, mixed>>
 */
function probe_refusals(Db $db): array
{
    $probes = [
        ['reconcile', 'SELECT count(*) FROM lhdiscord.reconcile()', []],
        ['reconcile (dry run)', 'SELECT count(*) FROM lhdiscord.reconcile(?, ?)', [true, false]],
        ['reconcile_user', 'SELECT lhdiscord.reconcile_user(?)', [1]],
        ['restore_user', 'SELECT lhdiscord.restore_user(?, ?)', [1, 1]],
        ['load_snapshot', 'SELECT lhdiscord.load_snapshot(CAST(? AS jsonb))', ['[]']],
        ['accept_snapshot', 'SELECT lhdiscord.accept_snapshot(?)', [1]],
        ['request_member_scan', 'SELECT lhdiscord.request_member_scan()', []],
        [
            'grant_break_glass',
            'SELECT lhdiscord.grant_break_glass(?, ?, ?, CAST(? AS timestamptz))',
            [1, 1, 'probe', '2999-01-01T00:00:00Z'],
        ],
        ['revoke_break_glass', 'SELECT lhdiscord.revoke_break_glass(?, ?)', [1, 1]],
        ['read worker_status', 'SELECT count(*) FROM lhdiscord.worker_status', []],
        ['read outbox_stats', 'SELECT count(*) FROM lhdiscord.outbox_stats', []],
        ['map_role', 'SELECT lhdiscord.map_role(?, ?)', ['traveler', '100000000000000099']],
        ['drain_outbox', 'SELECT lhdiscord.drain_outbox(?)', [1]],
        ['account_tokens', 'SELECT count(*) FROM lhdiscord.account_tokens(?)', [1]],
        ['read audit_log', 'SELECT count(*) FROM lhdiscord.audit_log', []],
        ['write audit_log', 'INSERT INTO lhdiscord.audit_log (action) VALUES (?)', ['forged']],
        ['read discord_accounts', 'SELECT count(*) FROM lhdiscord.discord_accounts', []],
        ['read outbox', 'SELECT count(*) FROM lhdiscord.outbox', []],
        [
            'write outbox',
            'UPDATE lhdiscord.outbox SET run_after = now() WHERE state = CAST(? AS lhdiscord.outbox_state)',
            ['pending'],
        ],
        ['write role_map', 'DELETE FROM lhdiscord.role_map WHERE key = ?', ['traveler']],
        ['write break_glass', 'DELETE FROM lhdiscord.break_glass WHERE user_id = ?', [1]],
    ];
    $results = [];
    foreach ($probes as [$what, $sql, $params]) {
        try {
            $db->all($sql, $params);
            $results[] = ['what' => $what, 'ok' => true];
        } catch (LhdiscordException $e) {
            $results[] = ['what' => $what, 'ok' => false] + error_json($e);
        }
    }
    return $results;
}

/**
 * A digest of everything the portal's role can read: its own users table
 * and lhdiscord's tables and views granted to lhdiscord_app (snapshot_age,
 * which grows by itself, left out).
 */
function visible_state(Db $db): string
{
    $parts = [
        $db->all('SELECT * FROM public.users ORDER BY id'),
        $db->all('SELECT * FROM lhdiscord.users ORDER BY user_id'),
        $db->all('SELECT * FROM lhdiscord.user_roles ORDER BY user_id, role'),
        $db->all('SELECT * FROM lhdiscord.account_overview ORDER BY id'),
        $db->all('SELECT user_id, username, identity_status, eligible, entitled, privileged, effective_access,'
            . ' policy_outcome, drift FROM lhdiscord.status_map ORDER BY user_id'),
    ];
    return hash('sha256', json_encode($parts, JSON_THROW_ON_ERROR));
}

/** @return array<string, mixed> */
function error_json(LhdiscordException $e): array
{
    return [
        'class' => $e::class,
        'sqlstate' => $e->getSqlState(),
        'message' => $e->getMessage(),
        'detail' => $e->getDetail(),
        'hint' => $e->getHint(),
    ];
}

/**
 * @param array<string, mixed> $state
 * @return array<string, mixed>
 */
function changed(bool $found, array $state): array
{
    return ['found' => $found] + $state;
}

/** @param array<string, mixed> $result */
function answer(array $result): int
{
    $flags = JSON_PRETTY_PRINT | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR;
    echo json_encode($result, $flags), "\n";
    return $result['ok'] ? 0 : 2;
}

/** @param list<string> $a */
function arg(array $a, int $i): string
{
    return $a[$i] ?? throw new InvalidArgumentException('missing argument ' . ($i + 1) . "\n" . USAGE);
}

/** @param list<string> $a */
function user(array $a, int $i): int
{
    $v = arg($a, $i);
    if (preg_match('/^-?\d{1,18}$/', $v) !== 1) {
        throw new InvalidArgumentException("not a user or account id: $v");
    }
    return (int) $v;
}

/**
 * The logged-in user, or null for a guest ("-"): Laravel's auth()->id().
 *
 * @param list<string> $a
 */
function actor(array $a, int $i): ?int
{
    return arg($a, $i) === '-' ? null : user($a, $i);
}

function flag(string $v): bool
{
    return match ($v) {
        'true' => true,
        'false' => false,
        default => throw new InvalidArgumentException("not true or false: $v"),
    };
}

function env(string $name): string
{
    $v = getenv($name);
    return is_string($v) && $v !== '' ? $v : throw new RuntimeException("$name is not set");
}

function stdin(): string
{
    return (string) stream_get_contents(STDIN);
}

function stdin_or_null(): ?string
{
    if (stream_isatty(STDIN)) {
        return null;
    }
    $s = stdin();
    return $s === '' ? null : $s;
}
