<?php

// examples/php/src/UnknownNotification.php: 22023 "unknown notification:
// <name>": not one of the Lighthouse notification names.

declare(strict_types=1);

namespace Lhdiscord;

class UnknownNotification extends InvalidArgument
{
}
