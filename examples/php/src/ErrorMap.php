<?php

// examples/php/src/ErrorMap.php: turns a PDOException from PostgreSQL into
// the application error it stands for. The SQLSTATEs and texts are the ones
// README.md and SPEC.md document for the functions the portal calls; one
// SQLSTATE can mean several things (42501 is the link gate, a portal actor's
// missing right, or a database role's missing grant), so the exact message
// decides among them. The first rule that matches wins; anything unmatched is
// a DatabaseError. docs/php-integration.md has the same table for humans.

declare(strict_types=1);

namespace Lhdiscord;

final class ErrorMap
{
    /**
     * [SQLSTATE (five characters, or a two-character class), pattern on the
     * primary message or null for any, exception class]
     *
     * @var list<array{string, ?string, class-string<LhdiscordException>}>
     */
    public const RULES = [
        ['42501', '/^You are not eligible to link a Discord account\.$/', NotEligible::class],
        ['42501', '/^This action is unauthorized\.$/', Unauthorized::class],
        ['42501', null, DatabasePermissionDenied::class],
        ['23514', '/^Maximum Discord accounts reached\.$/', AccountLimitReached::class],
        ['23505', '/^This Discord account is already linked to another user\.$/', AlreadyLinked::class],
        ['P0002', '/^user -?\d+ does not exist$/', UserNotFound::class],
        ['P0002', '/^Discord account -?\d+ does not exist$/', AccountNotFound::class],
        ['P0002', null, NotFound::class],
        ['22P02', '/^invalid Discord (user|role) id: /', InvalidSnowflake::class],
        ['22P02', null, InvalidValue::class],
        ['22004', null, MissingArgument::class],
        ['22001', null, ValueTooLong::class],
        ['22023', '/^unknown notification: /', UnknownNotification::class],
        ['22023', '/^lane urgent is reserved for removals that take access away$/', InvalidLane::class],
        ['22023', null, InvalidArgument::class],
        [
            '55000',
            '/^cannot store OAuth tokens: lhdiscord\.encryption_key is not set$/',
            EncryptionKeyMissing::class,
        ],
        ['55000', null, NotConfigured::class],
        ['28000', '/^Discord authorization failed\.$/', AuthorizationFailed::class],
        ['23', null, ConstraintViolation::class],
    ];

    /** The exception a failed statement stands for, wrapping the original. */
    public static function fromPdo(\PDOException $e): LhdiscordException
    {
        [$sqlState, $message, $detail, $hint] = self::parse($e);
        $class = self::classFor($sqlState, $message);
        return new $class($message, $sqlState, $detail, $hint, $e);
    }

    /** @return class-string<LhdiscordException> */
    public static function classFor(string $sqlState, string $message): string
    {
        foreach (self::RULES as [$state, $pattern, $class]) {
            if (!str_starts_with($sqlState, $state)) {
                continue;
            }
            if ($pattern === null || preg_match($pattern, $message) === 1) {
                return $class;
            }
        }
        return DatabaseError::class;
    }

    /**
     * SQLSTATE, primary message, DETAIL and HINT of a PDOException. pdo_pgsql
     * puts libpq's text in errorInfo[2]: "ERROR:  <message>\nDETAIL:  ...".
     *
     * @return array{string, string, ?string, ?string}
     */
    public static function parse(\PDOException $e): array
    {
        $info = $e->errorInfo;
        $sqlState = is_array($info) && is_string($info[0] ?? null) ? $info[0] : (string) $e->getCode();
        $text = is_array($info) && is_string($info[2] ?? null) ? $info[2] : $e->getMessage();
        if (preg_match('/^SQLSTATE\[([0-9A-Z]{5})\]/', $text, $m) === 1) {
            $sqlState = $m[1];
        }
        if (preg_match('/^[0-9A-Z]{5}$/', $sqlState) !== 1) {
            $sqlState = 'HY000';
        }
        $fields = ['MESSAGE' => [], 'DETAIL' => [], 'HINT' => []];
        $current = 'MESSAGE';
        foreach (preg_split('/\R/', $text) ?: [] as $i => $line) {
            if ($i === 0) {
                $severity = '/^(SQLSTATE\[\w+\]:[^:]*:\s*\d+\s+)?(ERROR|FATAL|PANIC):\s+/';
                $line = (string) preg_replace($severity, '', $line);
            } elseif (preg_match('/^(DETAIL|HINT|CONTEXT|QUERY|LINE \d+|STATEMENT):\s*(.*)$/', $line, $m) === 1) {
                $current = $m[1];
                $line = $m[2];
            }
            if (isset($fields[$current])) {
                $fields[$current][] = $line;
            }
        }
        $join = static fn (array $lines): ?string => $lines === [] ? null : implode("\n", $lines);
        return [$sqlState, (string) $join($fields['MESSAGE']), $join($fields['DETAIL']), $join($fields['HINT'])];
    }
}
