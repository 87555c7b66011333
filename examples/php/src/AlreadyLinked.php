<?php

// examples/php/src/AlreadyLinked.php: 23505 "This Discord account is already
// linked to another user.": the Discord account belongs to someone else.

declare(strict_types=1);

namespace Lhdiscord;

class AlreadyLinked extends LhdiscordException
{
}
