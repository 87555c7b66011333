<?php

// examples/php/src/LhdiscordException.php: the base of every error the
// library raises. It carries what PostgreSQL reported: the SQLSTATE, the
// primary message (lhdiscord's texts are exact, SPEC section 3), and the
// DETAIL and HINT lines when the server sent them. ErrorMap picks the
// subclass; catch the subclass you can act on and let the rest bubble up.

declare(strict_types=1);

namespace Lhdiscord;

class LhdiscordException extends \RuntimeException
{
    public function __construct(
        string $message,
        private readonly string $sqlState,
        private readonly ?string $detail = null,
        private readonly ?string $hint = null,
        ?\Throwable $previous = null,
    ) {
        parent::__construct($message, 0, $previous);
    }

    /** The five-character SQLSTATE, e.g. "42501". */
    public function getSqlState(): string
    {
        return $this->sqlState;
    }

    /** The server's DETAIL line (which check failed), or null. */
    public function getDetail(): ?string
    {
        return $this->detail;
    }

    /** The server's HINT line, or null. */
    public function getHint(): ?string
    {
        return $this->hint;
    }
}
